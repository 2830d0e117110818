//! `hoist run MODEL --prompt TEXT`: one reply, streamed to stdout (or one JSON object with
//! `--json`), then one line of timings on stderr.

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use hoist_runtime::chat::Message;

use super::model::Checkpoint;
use super::turn::{self, Stdout};
use super::{default_context, load, system_messages, Loaded, Settings};

/// Generates the reply to `prompt`.
pub fn run(s: &Settings, prompt: &str) -> anyhow::Result<()> {
    let a = &s.args;
    let ck = Checkpoint::open(&a.model, a.raw)?;
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
    let Loaded {
        model,
        load_seconds,
        context,
        stop_tokens,
    } = load(s, &ck, |config| {
        a.context
            .unwrap_or_else(|| default_context(config).max(ids.len().saturating_add(s.max_tokens)))
    })?;
    if a.verbose {
        eprintln!("prompt: {} tokens", ids.len());
    }
    let mut session = model.session(context)?;
    let mut out = Stdout::default();
    let streaming = !a.json;
    // No Ctrl-C handler here: Ctrl-C ends a one-shot run as it ends any command.
    let never = AtomicBool::new(false);
    let turn = turn::run(
        &mut session,
        &ck,
        &ids,
        s,
        &stop_tokens,
        0,
        &never,
        &mut |t| {
            if streaming {
                out.write(t);
            }
        },
    )
    .with_context(|| format!("generation with {} failed", a.model.display()))?;
    if streaming {
        out.write("\n");
        out.finish()?;
    }
    eprintln!(
        "{}",
        turn.summary(&ck, Some(load_seconds), s.process_start, "after start")
    );
    let g = &turn.generation;
    let ttft = turn
        .first_token
        .saturating_duration_since(s.process_start)
        .as_secs_f64();
    let total = turn
        .finished
        .saturating_duration_since(s.process_start)
        .as_secs_f64();
    if a.verbose {
        eprintln!(
            "prefill {:.4} s, decode {:.4} s, whole run {total:.3} s, seed {}",
            g.prefill.as_secs_f64(),
            g.decode.as_secs_f64(),
            s.sampling.seed
        );
    }
    if a.json {
        let (stop_token, stop_string) = match &g.stop {
            hoist_runtime::sampler::StopReason::Eos(id) => (Some(*id), None),
            hoist_runtime::sampler::StopReason::StopString(st) => (None, Some(st.clone())),
            hoist_runtime::sampler::StopReason::MaxTokens
            | hoist_runtime::sampler::StopReason::Cancelled => (None, None),
        };
        let doc = serde_json::json!({
            "model": a.model,
            "device": a.device.to_string(),
            "text": g.text,
            "tokens": g.tokens,
            "prompt_tokens": turn.prompt_tokens,
            "generated_tokens": g.tokens.len(),
            "stop": turn.stop_label(),
            "stop_token": stop_token,
            "stop_string": stop_string,
            "seed": s.sampling.seed,
            "context": context,
            "chat_template": ck.template.is_some(),
            "sampling": {
                "temperature": s.sampling.temperature,
                "top_k": s.sampling.top_k,
                "top_p": s.sampling.top_p,
                "min_p": s.sampling.min_p,
                "repeat_penalty": s.sampling.repetition_penalty,
            },
            "timings": {
                "load_seconds": load_seconds,
                "first_token_seconds": ttft,
                "prefill_seconds": g.prefill.as_secs_f64(),
                "prefill_tokens_per_s": turn.prefill_tokens_per_s(),
                "decode_seconds": g.decode.as_secs_f64(),
                "decode_tokens_per_s": g.decode_tokens_per_s(),
                "total_seconds": total,
            },
            "load": model.gpu_stats(),
        });
        println!("{}", serde_json::to_string(&doc)?);
    }
    Ok(())
}
