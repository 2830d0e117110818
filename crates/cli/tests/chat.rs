//! `hoist run` as a new user meets it: the chat's commands and Ctrl-C driven through a real
//! pseudo-terminal, the load's progress bar (on a terminal only), and the chat template's
//! source named as it really is (`chat_template.jinja`, where transformers 5 writes it).

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist_runtime::chat::ChatTemplate;
use hoist_runtime::tokenizer::Tokenizer;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};

use common::{
    cpu_args, greedy_args, hoist, hoist_with_stdin, model_dir, stderr, stdout_json, success,
};

/// The chat's prompt, at the start of a line (the terminal ends lines with CR LF).
const PROMPT: &str = "\n> ";

/// How long any one expected piece of output may take (a tiny model on the CPU: well under a
/// second, but CI machines are shared).
const EXPECT_TIMEOUT: Duration = Duration::from_secs(60);

/// `hoist` running in a pseudo-terminal: stdin, stdout and stderr are the terminal, as when a
/// user types at it, so Ctrl-C (byte 0x03) reaches it as SIGINT.
struct Terminal {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    /// Everything the terminal showed so far (a reader thread appends).
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of `output` earlier expectations consumed.
    seen: usize,
    // Kept open: dropping the master side hangs up the terminal.
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Terminal {
    fn start<S: AsRef<OsStr>>(args: &[S]) -> Terminal {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_hoist"));
        cmd.args(args);
        let child = pair.slave.spawn_command(cmd).expect("hoist starts");
        // Only the child holds the terminal's slave side: its exit ends the reader.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends at EOF or EIO: the child closed the terminal.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            child,
            writer,
            output,
            seen: 0,
            _master: pair.master,
        }
    }

    /// The terminal's output from `from` on, as text.
    fn text_from(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()[from..]).into_owned()
    }

    /// Waits for `needle` in the output not yet consumed; returns that output up to the end of
    /// `needle` and consumes it.
    fn expect(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self.output.lock().unwrap()[self.seen..].to_vec();
            if let Some(at) = out
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let end = at + needle.len();
                self.seen += end;
                return String::from_utf8_lossy(&out[..end]).into_owned();
            }
            assert!(
                start.elapsed() < EXPECT_TIMEOUT,
                "{needle:?} did not appear; the terminal showed:\n{}",
                self.text_from(0)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `bytes` more bytes were shown than consumed so far (a reply is
    /// streaming), and consumes them.
    fn expect_more(&mut self, bytes: usize) {
        let start = Instant::now();
        while self.output.lock().unwrap().len() < self.seen + bytes {
            assert!(
                start.elapsed() < EXPECT_TIMEOUT,
                "no reply streamed; the terminal showed:\n{}",
                self.text_from(0)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.seen += bytes;
    }

    /// Types `text` (a line ends with `\r`, as the Enter key sends it).
    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// Ctrl-C at the prompt: says how to quit, and does not quit.
    fn interrupt_at_prompt(&mut self) {
        self.send("\x03");
        self.expect("Ctrl-C again");
        self.expect(PROMPT);
    }

    /// Waits for the process to end, and checks that it succeeded.
    fn wait_success(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let code = status.exit_code();
                assert_eq!(
                    code,
                    0,
                    "exit code {code}; the terminal showed:\n{}",
                    self.text_from(0)
                );
                return;
            }
            assert!(
                start.elapsed() < EXPECT_TIMEOUT,
                "hoist did not exit; the terminal showed:\n{}",
                self.text_from(0)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test must not leave a generating process behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }
}

/// Arguments of a greedy CPU chat on `model` whose replies run until interrupted: a context and
/// a token limit far beyond what a test waits for.
fn long_chat_args(model: &str) -> Vec<String> {
    greedy_args(model, 100000, &["--context", "100000", "-v"])
}

/// A CPU run of `model` that answers "hi" with one token, then `extra`.
fn one_token_args(model: &str, extra: &[&str]) -> Vec<String> {
    let one_token = ["--prompt", "hi", "--max-tokens", "1"];
    cpu_args(model, &[&one_token[..], extra].concat())
}

/// Rewrites the JSON file at `path` with `edit`.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// [`model_dir`] without end tokens: its replies go on until stopped.
fn endless_model_dir() -> tempfile::TempDir {
    let dir = model_dir(true);
    for (file, key) in [
        ("config.json", "eos_token_id"),
        ("tokenizer_config.json", "eos_token"),
    ] {
        edit_json(&dir.path().join(file), |v| {
            v.as_object_mut().unwrap().remove(key).unwrap();
        });
    }
    dir
}

/// The number after `label` in a turn's summary (`prompt 11 tokens`, `generated 3 tokens`).
fn count_after(summary: &str, label: &str) -> usize {
    summary
        .rsplit(label)
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} count in {summary}"))
}

#[test]
fn chat_help_ctrl_c_and_bye_through_a_terminal() {
    let dir = endless_model_dir();
    let m = dir.path().to_str().unwrap();
    let mut t = Terminal::start(&long_chat_args(m));
    t.expect(PROMPT);

    // /help lists the commands; it is not sent to the model.
    t.send("/help\r");
    let help = t.expect(PROMPT);
    for command in ["/help", "/bye", "/reset", "Ctrl-C", "Ctrl-D"] {
        assert!(help.contains(command), "{command} not listed: {help}");
    }
    assert!(!help.contains("first token"), "/help got a reply: {help}");

    // Ctrl-C while a reply streams stops it; the prompt comes back.
    t.send("Hello there\r");
    t.expect("Hello there");
    t.expect_more(200);
    t.send("\x03");
    let turn = t.expect("stop: Ctrl-C");
    assert!(turn.contains("after the message"), "{turn}");
    let first_prompt = count_after(&turn, "prompt ");
    t.expect(PROMPT);

    // The chat goes on, with its history: the first exchange (its reply as far as it went)
    // comes before the new message, which alone is about as long as the first.
    t.send("How are you?\r");
    t.expect("How are you?");
    t.expect_more(200);
    t.send("\x03");
    let turn = t.expect("stop: Ctrl-C");
    assert!(
        count_after(&turn, "prompt ") > 2 * first_prompt,
        "the history was not kept: {turn}"
    );
    assert!(count_after(&turn, "generated ") > 0, "{turn}");
    t.expect(PROMPT);

    t.interrupt_at_prompt();

    t.send("/bye\r");
    t.wait_success();
}

#[test]
fn ctrl_c_twice_at_the_prompt_ends_the_chat() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let mut t = Terminal::start(&long_chat_args(m));
    t.expect(PROMPT);
    t.interrupt_at_prompt();
    t.send("\x03");
    t.wait_success();
}

#[test]
fn the_load_shows_progress_on_a_terminal_only() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let args = one_token_args(m, &[]);
    let mut t = Terminal::start(&args);
    t.wait_success();
    // The reader thread may still be draining the terminal.
    let shown = t.expect("first token");
    // The bar shows the bytes against the weights' total (the fixture's are some hundred KiB)
    // and a rate.
    assert!(shown.contains("loading ["), "no progress bar: {shown}");
    assert!(
        shown.contains(" KiB") && shown.contains("B/s"),
        "no bytes or rate: {shown}"
    );

    // Not a terminal: no bar, no escape codes.
    let out = hoist(&args);
    success(&out);
    let err = stderr(&out);
    assert!(!err.contains("loading [") && !err.contains('\x1b'), "{err}");
}

#[test]
fn chat_commands_are_not_sent_to_the_model() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let args = greedy_args(m, 3, &[]);
    // /bye ends the chat before the next line.
    let out = hoist_with_stdin(&args, "/help\n/nonsense\n/bye\nHello there\n");
    assert_eq!(success(&out), "", "no message reached the model");
    let err = stderr(&out);
    assert!(err.contains("/bye") && err.contains("/reset"), "{err}");
    assert!(
        err.contains("unknown command /nonsense") && err.contains("/help"),
        "{err}"
    );
    // A message that only starts with a space and a slash is a message.
    let out = hoist_with_stdin(&args, " /etc/hosts?\n");
    assert!(!success(&out).is_empty(), "{}", stderr(&out));
}

/// The fixture tokenizer's chat template, taken out of its config.
fn split_template(dir: &Path) -> String {
    let mut template = String::new();
    edit_json(&dir.join("tokenizer_config.json"), |config| {
        let taken = config.as_object_mut().unwrap().remove("chat_template");
        template = taken.unwrap().as_str().unwrap().to_string();
    });
    template
}

/// The `chat template: …` part of `--verbose`'s setup.
fn template_origin(err: &str) -> &str {
    err.lines()
        .find_map(|l| l.split("chat template: ").nth(1))
        .unwrap_or_else(|| panic!("no chat template line: {err}"))
}

#[test]
fn verbose_names_the_chat_template_file_it_came_from() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let args = one_token_args(m, &["-v"]);
    // From tokenizer_config.json.
    let out = hoist(&args);
    success(&out);
    let config = dir.path().join("tokenizer_config.json");
    assert_eq!(
        template_origin(&stderr(&out)),
        format!("{} chat_template", config.display())
    );

    // From chat_template.jinja, as transformers 5 saves it (the config has none).
    let template = split_template(dir.path());
    let jinja = dir.path().join("chat_template.jinja");
    std::fs::write(&jinja, &template).unwrap();
    let out = hoist(&args);
    success(&out);
    assert_eq!(template_origin(&stderr(&out)), jinja.display().to_string());
}

#[test]
fn chat_template_jinja_wins_over_the_config_as_in_transformers() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let config_template = split_template(dir.path());
    // Put the template back in the config, and a different one in the file.
    edit_json(&dir.path().join("tokenizer_config.json"), |config| {
        config["chat_template"] = config_template.clone().into();
    });
    let file_template = format!("{{{{ 'Be brief.' }}}}{config_template}");
    let jinja = dir.path().join("chat_template.jinja");
    std::fs::write(&jinja, &file_template).unwrap();

    let tok = Tokenizer::from_hf_dir(&common::fixtures().join("tokenizer")).unwrap();
    let prompt_tokens = |template: &str| {
        let bos = tok.id_to_token(tok.bos().unwrap()).unwrap();
        let eos = tok.id_to_token(tok.eos()[0]).unwrap();
        let t = ChatTemplate::new(template, "test", bos, eos).unwrap();
        let text = t
            .render(&[hoist_runtime::chat::Message::new("user", "hi")], true)
            .unwrap();
        tok.encode(&text, false).unwrap().len()
    };
    assert_ne!(
        prompt_tokens(&file_template),
        prompt_tokens(&config_template)
    );

    let out = hoist(&one_token_args(m, &["--json", "-v"]));
    let doc = stdout_json(&out);
    assert_eq!(doc["prompt_tokens"], prompt_tokens(&file_template));
    assert_eq!(template_origin(&stderr(&out)), jinja.display().to_string());
}
