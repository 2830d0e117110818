//! `hoist run MODEL` without `--prompt`: a chat reading one user message per line of stdin
//! (a terminal or a pipe), replies streamed to stdout.
//!
//! Each turn re-renders the whole conversation with the chat template; when the new tokens
//! extend those already in the KV cache (the usual case: the previous prompt, then the reply),
//! only the new ones are run. A line that begins with `/` is a command ([`HELP`]). Ctrl-C stops
//! the reply being generated (what it said so far stays in the conversation); at the prompt it
//! says how to quit, and a second Ctrl-C in a row quits (with stdin not a terminal, there is no
//! prompt to come back to: the first one quits).

use std::io::{IsTerminal, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hoist_engine::{Completion, Engine, EngineError, Stop};
use hoist_runtime::chat::Message;

use super::input::{Event, Input};
use super::turn::{self, Stdout};
use super::{cli_error, load, open_checkpoint, system_messages, Settings};

/// What `/help` prints.
pub const HELP: &str = "\
commands:
  /help, /?         this list
  /reset, /clear    forget the conversation (a --system message stays)
  /bye, /exit       end the chat
keys:
  Ctrl-C            stop the reply being generated; at the prompt, twice in a row ends the chat
  Ctrl-D            end the chat
A line that begins with / is a command; begin it with a space to send it as a message.";

/// A line of the chat that is a command, not a message.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Help,
    Reset,
    Bye,
    /// An unknown command: its first word.
    Unknown(&'a str),
}

/// The command `line` is, or `None` for a message: commands begin with `/` right away, so a
/// message that starts with `/` is sent with a space before it.
fn command(line: &str) -> Option<Command<'_>> {
    if !line.starts_with('/') {
        return None;
    }
    Some(match line.trim_end() {
        "/help" | "/?" => Command::Help,
        "/reset" | "/clear" => Command::Reset,
        "/bye" | "/exit" => Command::Bye,
        other => Command::Unknown(other.split_whitespace().next().unwrap_or(other)),
    })
}

/// Runs the chat until end of input, `/bye` or Ctrl-C twice at the prompt.
pub fn run(s: &Settings) -> anyhow::Result<()> {
    let a = &s.args;
    let ck = open_checkpoint(a)?;
    let mut history = system_messages(s, &ck);
    let kept = history.len();
    // The engine's session holds the conversation's KV cache: each turn feeds only what it
    // lacks, and a turn that does not extend it (after /reset) starts it over.
    let engine = load(s, ck, 0)?;
    let context = engine.info().context;
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!(
            "chatting with {} (one message per line; /help lists the commands, /bye or Ctrl-D \
             quits)",
            a.model.display()
        );
    }
    // Ctrl-C is caught from here on: during the load it still ends the process at once.
    let input = Input::start();
    let mut out = Stdout::default();
    let mut failed = 0usize;
    let mut turns = 0u64;
    // Ctrl-C presses at the prompt since the last line.
    let mut interrupts = 0;
    loop {
        if tty {
            eprint!("> ");
            // The prompt is a nicety: a closed stderr must not end the chat.
            let _ = std::io::stderr().flush();
        }
        let text = match input.next() {
            Event::Line(text) => text,
            Event::End => {
                if tty {
                    eprintln!();
                }
                break;
            }
            Event::Failed(e) => return Err(anyhow::Error::new(e).context("cannot read stdin")),
            Event::Interrupt => {
                eprintln!();
                if !tty || interrupts > 0 {
                    break;
                }
                interrupts += 1;
                eprintln!("(Ctrl-C again, /bye or Ctrl-D quits; /help lists the commands)");
                continue;
            }
        };
        interrupts = 0;
        match command(&text) {
            Some(Command::Help) => {
                eprintln!("{HELP}");
                continue;
            }
            Some(Command::Bye) => break,
            Some(Command::Reset) => {
                history.truncate(kept);
                // A new conversation: its turns count (and vary the seed) from 0 again.
                turns = 0;
                eprintln!("(conversation reset)");
                continue;
            }
            Some(Command::Unknown(name)) => {
                eprintln!(
                    "unknown command {name}: /help lists the commands (begin a message with a \
                     space to send one that starts with /)"
                );
                continue;
            }
            None if text.trim().is_empty() => continue,
            None => {}
        }
        history.push(Message::new("user", text));
        let r = input.generating(|cancel| reply(s, &engine, &history, turns, cancel, &mut out));
        match r {
            Ok(Some(turn)) => {
                turns += 1;
                out.write("\n");
                // A reply stopped by Ctrl-C stays as far as it went: it is what the user saw,
                // and what the KV cache holds.
                history.push(Message::new("assistant", turn.text.as_str()));
                if turn.stats.stop == Stop::ContextFull {
                    eprintln!(
                        "note: the reply was cut short: the context of {context} positions is \
                         full; /reset starts a new conversation, --context N sets a larger one"
                    );
                }
                if a.verbose {
                    eprintln!(
                        "{}",
                        turn::summary(
                            &turn.stats,
                            engine.checkpoint(),
                            None,
                            turn.stats.submitted,
                            "after the message"
                        )
                    );
                }
            }
            Ok(None) => {
                history.pop();
            }
            Err(e) => {
                history.pop();
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
        if out.error.is_some() {
            break;
        }
    }
    out.finish()?;
    anyhow::ensure!(failed == 0, "{failed} of the chat's turns failed");
    Ok(())
}

/// One reply to the conversation `history` (ending with the user's message), streamed until it
/// ends or `cancel` is set; `None` when the conversation no longer fits the context (said on
/// stderr).
fn reply(
    s: &Settings,
    engine: &Engine,
    history: &[Message],
    turn: u64,
    cancel: &Arc<AtomicBool>,
    out: &mut Stdout,
) -> anyhow::Result<Option<Completion>> {
    let input = hoist_engine::Input::Messages(history.to_vec());
    let request = s.request(input, turn, Some(cancel.clone()));
    match turn::run(engine, request, &mut |t| out.write(t)) {
        Ok(c) => Ok(Some(c)),
        Err(EngineError::PromptTooLong {
            prompt_tokens,
            context,
        }) => {
            eprintln!(
                "the conversation is {prompt_tokens} tokens and no longer fits the context of \
                 {context} positions: /reset starts a new one, --context N sets a larger context"
            );
            Ok(None)
        }
        Err(e) => Err(cli_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_begin_with_a_slash() {
        assert_eq!(command("/help"), Some(Command::Help));
        assert_eq!(command("/? "), Some(Command::Help));
        assert_eq!(command("/bye"), Some(Command::Bye));
        assert_eq!(command("/exit"), Some(Command::Bye));
        assert_eq!(command("/clear"), Some(Command::Reset));
        assert_eq!(command("/by e"), Some(Command::Unknown("/by")));
        assert_eq!(command(" /bye"), None, "a space first: a message");
        assert_eq!(command("hi /bye"), None);
        assert_eq!(command(""), None);
    }
}
