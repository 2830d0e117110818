//! The chat's input: lines of stdin, read on a thread of their own, and Ctrl-C, so that the chat
//! waits for either, and Ctrl-C stops a reply instead of ending the process.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

/// What the chat waits for.
pub enum Event {
    /// A line of input, its line ending removed.
    Line(String),
    /// The end of input (Ctrl-D on a terminal).
    End,
    /// Reading stdin failed (not UTF-8, most likely).
    Failed(std::io::Error),
    /// Ctrl-C while no reply was being generated.
    Interrupt,
}

/// Stdin and Ctrl-C, as [`Event`]s.
pub struct Input {
    events: Receiver<Event>,
    /// Set by Ctrl-C while a reply is generated; the generation loop polls it.
    cancel: Arc<AtomicBool>,
    /// Whether a reply is being generated: where Ctrl-C goes.
    generating: Arc<AtomicBool>,
}

impl Input {
    /// Starts reading stdin and catching Ctrl-C. Where Ctrl-C cannot be caught it keeps ending
    /// the process, as before (said on stderr).
    pub fn start() -> Input {
        let (tx, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let generating = Arc::new(AtomicBool::new(false));
        let handler = {
            let (tx, cancel, generating) = (tx.clone(), cancel.clone(), generating.clone());
            move || {
                if generating.load(Ordering::SeqCst) {
                    cancel.store(true, Ordering::SeqCst);
                } else {
                    // The chat has ended when nobody receives: nothing to do then.
                    let _ = tx.send(Event::Interrupt);
                }
            }
        };
        if let Err(e) = ctrlc::set_handler(handler) {
            eprintln!("note: cannot catch Ctrl-C ({e}); it ends hoist instead of stopping a reply");
        }
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut line = String::new();
                let event = match stdin.read_line(&mut line) {
                    Ok(0) => Event::End,
                    Ok(_) => {
                        line.truncate(line.trim_end_matches(['\n', '\r']).len());
                        Event::Line(line)
                    }
                    Err(e) => Event::Failed(e),
                };
                let last = !matches!(event, Event::Line(_));
                if tx.send(event).is_err() || last {
                    return;
                }
            }
        });
        Input {
            events,
            cancel,
            generating,
        }
    }

    /// The next line, end of input, or Ctrl-C.
    pub fn next(&self) -> Event {
        // Both senders gone cannot happen while `self` lives (the handler holds one); end anyway.
        self.events.recv().unwrap_or(Event::End)
    }

    /// Runs `reply` with Ctrl-C setting the flag it is given (instead of reaching
    /// [`Input::next`]).
    pub fn generating<T>(&self, reply: impl FnOnce(&Arc<AtomicBool>) -> T) -> T {
        self.cancel.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
        let out = reply(&self.cancel);
        self.generating.store(false, Ordering::SeqCst);
        out
    }
}
