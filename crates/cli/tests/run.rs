//! `hoist run` end to end on the runtime's tiny fixtures, on the CPU reference: output equals
//! what the runtime library generates for the same prompt and settings, seeds repeat, the chat
//! loop keeps its history and KV cache, and bad input is a clear error.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::{
    assert_error_line, cpu_args, fixtures, greedy_args, hoist, hoist_with_stdin, model_dir, stderr,
    stdout_json, success,
};

use hoist_runtime::chat::{ChatTemplate, Message};
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::generate::{generate, CpuSession, GenerateOptions, Generation};
use hoist_runtime::sampler::{SamplingParams, StopReason};
use hoist_runtime::tokenizer::Tokenizer;

/// A run that must fail with one `error:` line containing every one of `needles`.
fn fails_with<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S], needles: &[&str]) {
    assert_error_line(&hoist(args), &format!("{args:?}"), needles);
}

/// What the runtime library generates on the CPU for `ids`, as `hoist run` should.
fn library_generate(
    model: &Path,
    ids: &[u32],
    max_tokens: usize,
    sampling: SamplingParams,
) -> Generation {
    let m = CpuModel::load(model).unwrap();
    let tok = tokenizer_of(model);
    let mut stop_tokens = tok.eos().to_vec();
    for id in &m.config.eos_token_ids {
        if !stop_tokens.contains(id) {
            stop_tokens.push(*id);
        }
    }
    let mut session = CpuSession::new(&m, ids.len() + max_tokens).unwrap();
    let options = GenerateOptions {
        max_tokens,
        sampling,
        stop_strings: Vec::new(),
        stop_tokens,
    };
    generate(&mut session, &tok, ids, &options, &mut |_| {}).unwrap()
}

fn tokenizer_of(model: &Path) -> Tokenizer {
    if model.is_dir() {
        return Tokenizer::from_hf_dir(model).unwrap();
    }
    let table = hoist_format::TensorTable::open(model).unwrap();
    Tokenizer::from_gguf(&table.metadata, model).unwrap()
}

/// The prompt ids of a chat for the Hugging Face fixture: the template's text, encoded
/// without added special tokens (the template prints BOS).
fn chat_ids(model: &Path, messages: &[Message]) -> Vec<u32> {
    let tok = tokenizer_of(model);
    let t = ChatTemplate::for_tokenizer(&tok, "test").unwrap().unwrap();
    tok.encode(&t.render(messages, true).unwrap(), false)
        .unwrap()
}

fn greedy() -> SamplingParams {
    SamplingParams::default()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_one_shot_on_cpu_streams_what_the_library_generates() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let args = greedy_args(m, 8, &["--prompt", "hi"]);
    let first = hoist(&args);
    let text = success(&first);
    assert_eq!(text, success(&hoist(&args)), "greedy output repeats");
    let ids = chat_ids(dir.path(), &[Message::new("user", "hi")]);
    let g = library_generate(dir.path(), &ids, 8, greedy());
    assert_eq!(text, format!("{}\n", g.text));

    let err = stderr(&first);
    assert!(err.contains("f32 CPU reference"), "{err}");
    assert!(err.contains(&format!("loading {m} onto cpu")), "{err}");
    let summary = err.lines().last().unwrap();
    assert!(
        summary.starts_with("load ")
            && summary.contains("first token")
            && summary.contains(&format!("prompt {} tokens", ids.len()))
            && summary.contains(&format!("generated {} tokens", g.tokens.len()))
            && summary.contains("stop: "),
        "{summary}"
    );
}

#[test]
fn json_reports_text_tokens_stop_and_timings() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let mut stops = Vec::new();
    for (prompt, max_tokens) in [("hi", 8usize), ("The lazy dog", 8)] {
        let doc = stdout_json(&hoist(&greedy_args(
            m,
            max_tokens,
            &["--seed", "11", "--prompt", prompt, "--json"],
        )));
        let ids = chat_ids(dir.path(), &[Message::new("user", prompt)]);
        let g = library_generate(dir.path(), &ids, max_tokens, greedy());
        assert_eq!(doc["text"], g.text.as_str(), "{prompt}");
        assert_eq!(u32s(&doc["tokens"]), g.tokens);
        assert_eq!(doc["prompt_tokens"], ids.len());
        assert_eq!(doc["generated_tokens"], g.tokens.len());
        let (stop, token) = match g.stop {
            StopReason::Eos(id) => ("eos", serde_json::json!(id)),
            StopReason::MaxTokens => ("max_tokens", serde_json::Value::Null),
            StopReason::StopString(_) | StopReason::Cancelled => {
                unreachable!("no stop strings, nothing cancels")
            }
        };
        assert_eq!((&doc["stop"], &doc["stop_token"]), (&stop.into(), &token));
        stops.push(doc["stop"].clone());
        assert_eq!(doc["device"], "cpu");
        assert_eq!(doc["model"], m);
        assert_eq!(doc["seed"], 11);
        assert_eq!(doc["chat_template"], true);
        // The default context: the model's 256 positions, raised to fit prompt + reply.
        assert_eq!(doc["context"], 256);
        let t = &doc["timings"];
        let secs = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}"));
        assert!(secs("load_seconds") > 0.0 && secs("prefill_seconds") > 0.0);
        assert!(secs("first_token_seconds") > secs("load_seconds"));
        assert!(secs("first_token_seconds") <= secs("total_seconds"));
        assert!(secs("prefill_tokens_per_s") > 0.0);
        secs("decode_tokens_per_s");
    }
    // Both stop reasons were reported: "hi" runs to the limit, "The lazy dog" to the end token.
    assert!(stops.contains(&"eos".into()), "{stops:?}");
    assert!(stops.contains(&"max_tokens".into()), "{stops:?}");
}

#[test]
fn seeds_make_sampling_reproducible() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let run = |seed: u64| {
        stdout_json(&hoist(&cpu_args(
            m,
            &[
                "--raw",
                "--prompt",
                "Hello, world!",
                "--max-tokens",
                "16",
                "--temperature",
                "1.2",
                "--top-k",
                "0",
                "--top-p",
                "1",
                "--min-p",
                "0",
                "--seed",
                &seed.to_string(),
                "--json",
            ],
        )))
    };
    let a = run(7);
    assert_eq!(a["tokens"], run(7)["tokens"], "same seed, same tokens");
    assert_ne!(a["tokens"], run(8)["tokens"], "another seed, other tokens");
    // --raw: the prompt tokenized as is; this tokenizer adds no BOS.
    let tok = tokenizer_of(dir.path());
    let ids = tok.encode("Hello, world!", true).unwrap();
    assert_eq!(a["prompt_tokens"], ids.len());
    assert_eq!(a["chat_template"], false);
    let g = library_generate(
        dir.path(),
        &ids,
        16,
        SamplingParams {
            temperature: 1.2,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 7,
        },
    );
    assert_eq!(u32s(&a["tokens"]), g.tokens);
}

#[test]
fn gguf_with_embedded_tokenizer_gets_bos_as_llama_cpp_adds_it() {
    let model = fixtures().join("gguf/llama-q8_0.gguf");
    let doc = stdout_json(&hoist(&greedy_args(
        model.to_str().unwrap(),
        6,
        &["--prompt", "hi", "--json"],
    )));
    // The file's template prints no BOS; tokenizer.ggml.add_bos_token asks for one.
    let tok = tokenizer_of(&model);
    let t = ChatTemplate::for_tokenizer(&tok, "test").unwrap().unwrap();
    let text = t.render(&[Message::new("user", "hi")], true).unwrap();
    let mut ids = vec![tok.bos().unwrap()];
    ids.extend(tok.encode(&text, false).unwrap());
    let g = library_generate(&model, &ids, 6, greedy());
    assert_eq!(doc["prompt_tokens"], ids.len());
    assert_eq!(u32s(&doc["tokens"]), g.tokens);
    assert_eq!(doc["text"], g.text.as_str());
}

#[test]
fn interactive_chat_keeps_history_and_reuses_the_cache() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let turn1 = Message::new("user", "Hello there");
    let turn2 = Message::new("user", "How are you?");
    // Two turns then end of input. One token per reply: the cache then holds exactly the first
    // prompt, which the second prompt extends.
    let out = hoist_with_stdin(&greedy_args(m, 1, &["-v"]), "Hello there\nHow are you?\n");
    let text = success(&out);
    let p1 = chat_ids(dir.path(), std::slice::from_ref(&turn1));
    let r1 = library_generate(dir.path(), &p1, 1, greedy()).text;
    let history = [
        turn1.clone(),
        Message::new("assistant", r1.as_str()),
        turn2.clone(),
    ];
    let p2 = chat_ids(dir.path(), &history);
    let r2 = library_generate(dir.path(), &p2, 1, greedy()).text;
    assert_eq!(text, format!("{r1}\n{r2}\n"));
    let err = stderr(&out);
    let turns: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("after the message"))
        .collect();
    assert_eq!(turns.len(), 2, "{err}");
    assert!(
        turns[0].contains(&format!("prompt {} tokens at", p1.len())),
        "{err}"
    );
    assert!(
        turns[1].contains(&format!("prompt {} tokens ({} cached)", p2.len(), p1.len())),
        "{err}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("> ")),
        "no prompt when stdin is a pipe: {err}"
    );

    // Longer replies: each turn is the library's reply to the whole conversation so far.
    let out = hoist_with_stdin(&greedy_args(m, 5, &[]), "Hello there\nHow are you?\n");
    let r1 = library_generate(dir.path(), &p1, 5, greedy()).text;
    let history = [turn1, Message::new("assistant", r1.as_str()), turn2];
    let r2 = library_generate(dir.path(), &chat_ids(dir.path(), &history), 5, greedy()).text;
    assert_eq!(success(&out), format!("{r1}\n{r2}\n"));

    // With a repetition penalty the cache is reused as without one, and the replies are still
    // the library's with the penalty over each full prompt (the cached tokens count too).
    let penalized = SamplingParams {
        repetition_penalty: 1.5,
        ..greedy()
    };
    let out = hoist_with_stdin(
        &greedy_args(m, 5, &["--repeat-penalty", "1.5", "-v"]),
        "Hello there\nHow are you?\n",
    );
    let r1p = library_generate(dir.path(), &p1, 5, penalized).text;
    let history = [
        Message::new("user", "Hello there"),
        Message::new("assistant", r1p.as_str()),
        Message::new("user", "How are you?"),
    ];
    let p2p = chat_ids(dir.path(), &history);
    let r2p = library_generate(dir.path(), &p2p, 5, penalized).text;
    assert_eq!(success(&out), format!("{r1p}\n{r2p}\n"));
    // One token per reply: the second prompt extends the cached first one, which is reused
    // with a penalty too.
    let out = hoist_with_stdin(
        &greedy_args(m, 1, &["--repeat-penalty", "1.5", "-v"]),
        "Hello there\nHow are you?\n",
    );
    let r1p = library_generate(dir.path(), &p1, 1, penalized).text;
    let history = [
        Message::new("user", "Hello there"),
        Message::new("assistant", r1p.as_str()),
        Message::new("user", "How are you?"),
    ];
    let p2p = chat_ids(dir.path(), &history);
    let r2p = library_generate(dir.path(), &p2p, 1, penalized).text;
    assert_eq!(success(&out), format!("{r1p}\n{r2p}\n"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "prompt {} tokens ({} cached)",
            p2p.len(),
            p1.len()
        )),
        "{err}"
    );

    // /reset forgets the conversation (the same message gets the same reply); /exit ends
    // before the next line.
    let out = hoist_with_stdin(
        &greedy_args(m, 5, &[]),
        "Hello there\n/reset\n\nHello there\n/exit\nnever read\n",
    );
    assert_eq!(success(&out), format!("{r1}\n{r1}\n"));
    assert!(stderr(&out).contains("(conversation reset)"));
}

#[test]
fn a_chat_that_outgrows_the_context_says_what_to_do() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let p1 = chat_ids(dir.path(), &[Message::new("user", "Hello there")]);
    let context = p1.len() + 3;
    let out = hoist_with_stdin(
        &greedy_args(m, 8, &["--context", &context.to_string()]),
        "Hello there\nagain and again and again\n",
    );
    success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "no longer fits the context of {context} positions"
        )) && err.contains("/reset")
            && err.contains("--context"),
        "{err}"
    );
}

#[test]
fn one_shot_replies_stop_where_an_explicit_context_ends() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let ids = chat_ids(dir.path(), &[Message::new("user", "hi")]);
    let doc = stdout_json(&hoist(&greedy_args(
        m,
        8,
        &[
            "--prompt",
            "hi",
            "--json",
            "--context",
            &(ids.len() + 2).to_string(),
        ],
    )));
    // "hi" gets 8 tokens without an end token (see the first test): 2 fit.
    assert_eq!(
        (doc["stop"].as_str(), doc["generated_tokens"].as_u64()),
        (Some("context_full"), Some(2))
    );

    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--context", &ids.len().to_string()]),
        &[&format!(
            "needs a context of at least {} positions",
            ids.len() + 1
        )],
    );
}

#[test]
fn a_model_without_chat_template_falls_back_to_raw() {
    let dir = model_dir(false);
    let m = dir.path().to_str().unwrap();
    let out = hoist(&greedy_args(m, 6, &["--prompt", "hi", "--json"]));
    let doc = stdout_json(&out);
    assert!(
        stderr(&out).contains("has no chat template"),
        "{}",
        stderr(&out)
    );
    assert_eq!(doc["chat_template"], false);
    let ids = tokenizer_of(dir.path()).encode("hi", true).unwrap();
    assert_eq!(
        u32s(&doc["tokens"]),
        library_generate(dir.path(), &ids, 6, greedy()).tokens
    );
}

#[test]
fn the_default_device_needs_a_gpu() {
    if hoist_runtime::cuda_available().is_ok() {
        eprintln!("skipping: this machine has a GPU");
        return;
    }
    let dir = model_dir(true);
    fails_with(
        &["run", dir.path().to_str().unwrap(), "--prompt", "hi"],
        &["hoist run needs an NVIDIA GPU with CUDA", "--device cpu"],
    );
    fails_with(
        &["run", dir.path().to_str().unwrap(), "--benchmark"],
        &["hoist run needs an NVIDIA GPU with CUDA"],
    );
}

#[test]
fn bad_models_and_settings_are_clear_errors() {
    fails_with(
        &[
            "run",
            "/nonexistent/model",
            "--device",
            "cpu",
            "--prompt",
            "hi",
        ],
        &["/nonexistent/model", "No such file"],
    );
    let llama = fixtures().join("llama");
    fails_with(
        &[
            "run",
            llama.to_str().unwrap(),
            "--device",
            "cpu",
            "--prompt",
            "hi",
        ],
        &[llama.to_str().unwrap(), "has no tokenizer.json"],
    );
    // A bare file name: its directory is the current one, named as ".".
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(cpu_args("model.safetensors", &["--prompt", "hi"]))
        .current_dir(&llama)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("error: . has no tokenizer.json"),
        "{err}"
    );
    let gguf = fixtures().join("gguf/qwen3-q4_0.gguf");
    fails_with(
        &[
            "run",
            gguf.to_str().unwrap(),
            "--device",
            "cpu",
            "--prompt",
            "hi",
        ],
        &[gguf.to_str().unwrap(), "has no tokenizer"],
    );
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--temperature", "-1"]),
        &["--temperature -1 is out of range"],
    );
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--top-p", "0"]),
        &["--top-p 0 is out of range"],
    );
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--repeat-penalty", "0"]),
        &["--repeat-penalty"],
    );
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--max-tokens", "0"]),
        &["--max-tokens must be at least 1"],
    );
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--context", "0"]),
        &["--context must be at least 1"],
    );
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--prompt-tokens", "5"]),
        &["--prompt-tokens goes with --benchmark"],
    );
    fails_with(
        &["run", m, "--device", "cpu", "--json"],
        &["--json needs --prompt"],
    );
    fails_with(
        &["run", m, "--device", "cpu", "--benchmark"],
        &["--benchmark measures the GPU runtime"],
    );
}

#[test]
fn a_context_too_large_for_memory_is_a_clear_error() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    for context in ["100000000000000", "1000000000000000000"] {
        fails_with(
            &cpu_args(m, &["--prompt", "hi", "--context", context]),
            &[
                &format!("KV cache of {context} positions"),
                "bytes",
                "--context",
            ],
        );
    }
    // Without --context the one-shot context holds the prompt and --max-tokens.
    fails_with(
        &cpu_args(m, &["--prompt", "hi", "--max-tokens", "100000000000000"]),
        &["KV cache of", "--context"],
    );
    fails_with(
        &cpu_args(
            m,
            &["--prompt", "hi", "--max-tokens", &usize::MAX.to_string()],
        ),
        &["KV cache of", "--context"],
    );
    // The chat makes its cache before reading stdin.
    fails_with(
        &cpu_args(m, &["--context", "100000000000000"]),
        &["KV cache of 100000000000000 positions", "--context"],
    );
}

#[test]
fn stop_strings_end_the_reply_unprinted() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let ids = chat_ids(dir.path(), &[Message::new("user", "hi")]);
    let full = library_generate(dir.path(), &ids, 8, greedy()).text;
    // A stop string from the middle of the reply: the text ends before its first occurrence.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() >= 4, "{full:?}");
    let (at, _) = chars[chars.len() / 2];
    let stop: String = full[at..].chars().take(2).collect();
    let cut = full.find(&stop).unwrap();
    let doc = stdout_json(&hoist(&greedy_args(
        m,
        8,
        &[
            "--prompt",
            "hi",
            "--stop",
            &stop,
            "--stop",
            "never seen",
            "--json",
        ],
    )));
    assert_eq!(doc["text"], &full[..cut]);
    assert_eq!(doc["stop"], "stop_string");
    assert_eq!(doc["stop_string"], stop.as_str());
    let out = hoist(&greedy_args(m, 8, &["--prompt", "hi", "--stop", &stop]));
    assert_eq!(success(&out), format!("{}\n", &full[..cut]));
}

#[test]
fn the_system_message_starts_the_conversation() {
    let dir = model_dir(true);
    let m = dir.path().to_str().unwrap();
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "hi"),
    ];
    let ids = chat_ids(dir.path(), &messages);
    let g = library_generate(dir.path(), &ids, 6, greedy());
    let doc = stdout_json(&hoist(&greedy_args(
        m,
        6,
        &["--prompt", "hi", "--system", "Be brief.", "--json"],
    )));
    assert_eq!(doc["prompt_tokens"], ids.len());
    assert_eq!(u32s(&doc["tokens"]), g.tokens);
    // Raw mode has no place for it: said, and left out.
    let out = hoist(&greedy_args(
        m,
        6,
        &["--prompt", "hi", "--system", "Be brief.", "--raw", "--json"],
    ));
    let raw = tokenizer_of(dir.path()).encode("hi", true).unwrap();
    assert_eq!(stdout_json(&out)["prompt_tokens"], raw.len());
    assert!(
        stderr(&out).contains("--system is ignored in raw mode"),
        "{}",
        stderr(&out)
    );
}
