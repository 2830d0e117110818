//! `hoist run MODEL` without `--prompt`: a chat reading one user message per line of stdin
//! (a terminal or a pipe), replies streamed to stdout.
//!
//! Each turn re-renders the whole conversation with the chat template; when the new tokens
//! extend those already in the KV cache (the usual case: the previous prompt, then the reply),
//! only the new ones are run. `/reset` forgets the conversation, `/exit` or end of input ends.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use hoist_runtime::chat::Message;

use super::model::{Checkpoint, Session};
use super::turn::{self, Stdout, Turn};
use super::{default_context, load, system_messages, Loaded, Settings};

/// Runs the chat until end of input or `/exit`.
pub fn run(s: &Settings) -> anyhow::Result<()> {
    let a = &s.args;
    let ck = Checkpoint::open(&a.model, a.raw)?;
    let mut history = system_messages(s, &ck);
    let kept = history.len();
    let Loaded {
        model,
        context,
        stop_tokens,
        ..
    } = load(s, &ck, |config| {
        a.context.unwrap_or_else(|| default_context(config))
    })?;
    let mut session = model.session(context)?;
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprintln!(
            "chatting with {} (one message per line; /reset starts over, /exit or Ctrl-D quits)",
            a.model.display()
        );
    }
    let mut input = stdin.lock();
    let mut out = Stdout::default();
    let mut failed = 0usize;
    let mut turns = 0u64;
    loop {
        if tty {
            eprint!("> ");
            // The prompt is a nicety: a closed stderr must not end the chat.
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if input.read_line(&mut line).context("cannot read stdin")? == 0 {
            if tty {
                eprintln!();
            }
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" => break,
            "/reset" => {
                history.truncate(kept);
                session.clear();
                // A new conversation: its turns count (and vary the seed) from 0 again.
                turns = 0;
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", text));
        match reply(
            s,
            &ck,
            &mut session,
            &history,
            &stop_tokens,
            turns,
            &mut out,
        ) {
            Ok(Some(turn)) => {
                turns += 1;
                out.write("\n");
                history.push(Message::new("assistant", turn.generation.text.as_str()));
                if turn.context_full {
                    eprintln!(
                        "note: the reply was cut short: the context of {context} positions is \
                         full; /reset starts a new conversation, --context N sets a larger one"
                    );
                }
                if a.verbose {
                    eprintln!(
                        "{}",
                        turn.summary(&ck, None, turn.started, "after the message")
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
        if out.closed {
            break;
        }
    }
    out.finish()?;
    anyhow::ensure!(failed == 0, "{failed} of the chat's turns failed");
    Ok(())
}

/// One reply to the conversation `history` (ending with the user's message), streamed; `None`
/// when the conversation no longer fits the context (said on stderr).
fn reply(
    s: &Settings,
    ck: &Checkpoint,
    session: &mut Session<'_>,
    history: &[Message],
    stop_tokens: &[u32],
    turn: u64,
    out: &mut Stdout,
) -> anyhow::Result<Option<Turn>> {
    let ids = ck.encode(history)?;
    let context = session.capacity();
    if ids.len() >= context {
        eprintln!(
            "the conversation is {} tokens and no longer fits the context of {context} \
             positions: /reset starts a new one, --context N sets a larger context",
            ids.len()
        );
        return Ok(None);
    }
    let t = turn::run(session, ck, &ids, s, stop_tokens, turn, &mut |t| {
        out.write(t)
    })?;
    Ok(Some(t))
}
