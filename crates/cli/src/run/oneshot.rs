//! `hoist run MODEL --prompt TEXT`: one reply, streamed to stdout (or one JSON object with
//! `--json`), then one line of timings on stderr.

use anyhow::Context;
use hoist_engine::{Input, Stop};
use hoist_runtime::chat::Message;

use super::turn::{self, Stdout};
use super::{cli_error, load, open_checkpoint, system_messages, Settings};

/// Generates the reply to `prompt`.
pub fn run(s: &Settings, prompt: &str) -> anyhow::Result<()> {
    let a = &s.args;
    let ck = open_checkpoint(a)?;
    let mut messages = system_messages(s, &ck);
    messages.push(Message::new("user", prompt));
    let ids = ck
        .encode(&messages)
        .with_context(|| format!("cannot make the prompt for {}", a.model.display()))?;
    // Checked before loading: the prompt's size needs only the tokenizer.
    if let Some(c) = a.context {
        anyhow::ensure!(
            ids.len() < c,
            "the prompt is {} tokens: it needs a context of at least {} positions, and --context \
             is {c}",
            ids.len(),
            ids.len() + 1
        );
    }
    // Without --context, the context holds the prompt and the whole reply.
    let engine = load(s, ck, ids.len().saturating_add(s.max_tokens))?;
    if a.verbose {
        eprintln!("prompt: {} tokens", ids.len());
    }
    let mut out = Stdout::default();
    let streaming = !a.json;
    // No Ctrl-C handler here: Ctrl-C ends a one-shot run as it ends any command.
    let request = s.request(Input::Tokens(ids), 0, None);
    let reply = turn::run(&engine, request, &mut |t| {
        if streaming {
            out.write(t);
        }
    })
    .map_err(cli_error)?;
    if streaming {
        out.write("\n");
        out.finish()?;
    }
    let info = engine.info();
    let ck = engine.checkpoint();
    let st = &reply.stats;
    eprintln!(
        "{}",
        turn::summary(
            st,
            ck,
            Some(info.load_seconds),
            s.process_start,
            "after start"
        )
    );
    let since_start =
        |t: std::time::Instant| t.saturating_duration_since(s.process_start).as_secs_f64();
    let total = since_start(st.finished);
    if a.verbose {
        eprintln!(
            "prefill {:.4} s, decode {:.4} s, whole run {total:.3} s, seed {}",
            st.prefill.as_secs_f64(),
            st.decode.as_secs_f64(),
            s.sampling.seed
        );
    }
    if a.json {
        let (stop_token, stop_string) = match &st.stop {
            Stop::Eos(id) => (Some(*id), None),
            Stop::StopString(text) => (None, Some(text.clone())),
            Stop::MaxTokens | Stop::ContextFull | Stop::Cancelled => (None, None),
        };
        let doc = serde_json::json!({
            "model": a.model,
            "device": a.device.to_string(),
            "text": reply.text,
            "tokens": reply.tokens,
            "prompt_tokens": st.prompt_tokens,
            "generated_tokens": st.generated_tokens,
            "stop": st.stop.label(),
            "stop_token": stop_token,
            "stop_string": stop_string,
            "seed": s.sampling.seed,
            "context": info.context,
            "chat_template": ck.template.is_some(),
            "sampling": {
                "temperature": s.sampling.temperature,
                "top_k": s.sampling.top_k,
                "top_p": s.sampling.top_p,
                "min_p": s.sampling.min_p,
                "repeat_penalty": s.sampling.repetition_penalty,
            },
            "timings": {
                "load_seconds": info.load_seconds,
                "first_token_seconds": since_start(st.first_token),
                "prefill_seconds": st.prefill.as_secs_f64(),
                "prefill_tokens_per_s": st.prefill_tokens_per_s(),
                "decode_seconds": st.decode.as_secs_f64(),
                "decode_tokens_per_s": st.decode_tokens_per_s,
                "total_seconds": total,
            },
            "load": info.gpu,
        });
        println!("{}", serde_json::to_string(&doc)?);
    }
    Ok(())
}
