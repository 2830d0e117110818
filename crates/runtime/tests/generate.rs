//! The generation loop over the CPU reference model and the fixture tokenizer: greedy output
//! equals the transformers reference, stop tokens and stop strings end it, seeds repeat.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hoist_runtime::cpu::CpuModel;
use hoist_runtime::generate::{
    generate, generate_after, generate_cancellable, CpuSession, GenerateOptions, Generation,
    LogitsModel,
};
use hoist_runtime::sampler::{SamplingParams, StopReason};
use hoist_runtime::tokenizer::Tokenizer;
use hoist_runtime::RuntimeError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference_ids(key: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("llama/reference.json")).unwrap(),
    )
    .unwrap();
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn run(model: &CpuModel, tok: &Tokenizer, opts: &GenerateOptions) -> (Generation, String) {
    let prompt = reference_ids("prompt");
    let mut session = CpuSession::new(model, prompt.len() + opts.max_tokens).unwrap();
    let mut streamed = String::new();
    let g = generate(&mut session, tok, &prompt, opts, &mut |t| {
        streamed.push_str(t)
    })
    .unwrap();
    (g, streamed)
}

#[test]
fn greedy_generation_streams_the_reference_tokens() {
    let model = CpuModel::load(&fixtures().join("llama")).unwrap();
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let greedy = reference_ids("greedy");
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let (g, streamed) = run(&model, &tok, &opts);
    assert_eq!(g.tokens, greedy);
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, tok.decode(&greedy, true).unwrap());
    assert!(g.decode_tokens_per_s() > 0.0);

    // An end token stops generation at once.
    let opts = GenerateOptions {
        max_tokens: 16,
        stop_tokens: vec![greedy[3]],
        ..Default::default()
    };
    let (g, _) = run(&model, &tok, &opts);
    assert_eq!(
        (g.tokens.len(), g.stop.clone()),
        (4, StopReason::Eos(greedy[3]))
    );
    assert_eq!(g.text, tok.decode(&greedy[..3], true).unwrap());
}

/// Emits a fixed script of tokens (one-hot logits), to drive the loop with known text.
struct Scripted {
    script: Vec<u32>,
    at: usize,
    vocab: usize,
}

impl LogitsModel for Scripted {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        if self.at > 0 {
            assert_eq!(
                tokens,
                &[self.script[self.at - 1]],
                "fed back the sampled token"
            );
        }
        let mut l = vec![0.0; self.vocab];
        l[self.script[self.at] as usize] = 1.0;
        self.at += 1;
        Ok(l)
    }
}

#[test]
fn stop_strings_across_tokens_and_partial_characters() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let text = "Hello, world! café 🙂 end";
    let script = tok.encode(text, false).unwrap();
    let run = |stops: &[&str], max_tokens: usize| {
        let mut m = Scripted {
            script: script.clone(),
            at: 0,
            vocab: tok.vocab_size(),
        };
        let opts = GenerateOptions {
            max_tokens,
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = generate(&mut m, &tok, &[0], &opts, &mut |t| streamed.push_str(t)).unwrap();
        assert_eq!(streamed, g.text);
        g
    };
    let g = run(&[], script.len());
    assert_eq!((g.text.as_str(), g.stop), (text, StopReason::MaxTokens));
    // "o, w" spans the tokens of "Hello" / "," / " world".
    let g = run(&["o, w"], script.len());
    assert_eq!(
        (g.text.as_str(), g.stop),
        ("Hell", StopReason::StopString("o, w".into()))
    );
    // A stop string inside a character split over several byte tokens.
    let g = run(&["🙂"], script.len());
    assert_eq!(g.text, "Hello, world! café ");
    // A limit that cuts the emoji's bytes: the partial character is shown as U+FFFD.
    let cut = (1..script.len())
        .find(|&n| {
            tok.decode(&script[..n], true)
                .unwrap()
                .ends_with('\u{fffd}')
        })
        .unwrap();
    let g = run(&[], cut);
    assert_eq!(g.text, tok.decode(&script[..cut], true).unwrap());
    assert_eq!(g.tokens.len(), cut);
}

#[test]
fn seeded_sampling_repeats() {
    let model = CpuModel::load(&fixtures().join("qwen2")).unwrap();
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let opts = |seed| GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.01,
            repetition_penalty: 1.1,
            seed,
        },
        ..Default::default()
    };
    let a = run(&model, &tok, &opts(5)).0.tokens;
    let b = run(&model, &tok, &opts(5)).0.tokens;
    let c = run(&model, &tok, &opts(6)).0.tokens;
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(a, c, "another seed, other tokens");
    assert_eq!(a.len(), 12);
}

/// The same logits at every step.
struct Fixed(Vec<f32>);

impl LogitsModel for Fixed {
    fn next_logits(&mut self, _tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        Ok(self.0.clone())
    }
}

#[test]
fn the_repetition_penalty_covers_tokens_already_cached() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let mut logits = vec![0.0; tok.vocab_size()];
    logits[10] = 2.0;
    logits[11] = 1.5;
    let opts = GenerateOptions {
        max_tokens: 1,
        sampling: SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let first = |cached: &[u32]| {
        generate_after(
            &mut Fixed(logits.clone()),
            &tok,
            cached,
            &[5],
            &opts,
            &mut |_| {},
        )
        .unwrap()
        .tokens
    };
    // Token 10 wins unless the penalty sees it in the context, cached or fed.
    assert_eq!(first(&[]), [10]);
    assert_eq!(first(&[10]), [11], "a cached token is penalized");
    let g = generate(&mut Fixed(logits.clone()), &tok, &[10], &opts, &mut |_| {}).unwrap();
    assert_eq!(g.tokens, [11], "a fed token is penalized");

    // On the CPU model: the prompt's head in the cache and its tail fed gives what feeding it
    // all gives, penalty included.
    let model = CpuModel::load(&fixtures().join("llama")).unwrap();
    let prompt = reference_ids("prompt");
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        },
        ..Default::default()
    };
    let whole = run(&model, &tok, &opts).0;
    let split = prompt.len() / 2;
    let mut session = CpuSession::new(&model, prompt.len() + opts.max_tokens).unwrap();
    session.next_logits(&prompt[..split]).unwrap();
    let g = generate_after(
        &mut session,
        &tok,
        &prompt[..split],
        &prompt[split..],
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens, whole.tokens);
}

#[test]
fn a_session_clears_and_refuses_an_impossible_context() {
    let model = CpuModel::load(&fixtures().join("llama")).unwrap();
    let prompt = reference_ids("prompt");
    let mut session = CpuSession::new(&model, prompt.len()).unwrap();
    assert_eq!(session.capacity(), prompt.len());
    let a = session.next_logits(&prompt).unwrap();
    assert!(session.next_logits(&[0]).is_err(), "the cache is full");
    session.clear();
    assert_eq!(session.next_logits(&prompt).unwrap(), a);
    let err = CpuSession::new(&model, 1 << 60).unwrap_err().to_string();
    assert!(err.contains(&(1usize << 60).to_string()), "{err}");
}

/// A scripted model that can also decode greedily "itself", recording every token fed.
struct Recorder {
    script: Vec<u32>,
    at: usize,
    vocab: usize,
    /// Whether `decode_greedy` is offered.
    device: bool,
    device_calls: usize,
    fed: Vec<u32>,
}

impl Recorder {
    fn new(script: &[u32], vocab: usize, device: bool) -> Recorder {
        Recorder {
            script: script.to_vec(),
            at: 0,
            vocab,
            device,
            device_calls: 0,
            fed: Vec::new(),
        }
    }

    /// Feeds `token` (after the prompt) and returns the script's next token.
    fn feed(&mut self, token: u32) -> u32 {
        assert_eq!(token, self.script[self.at - 1], "fed back the chosen token");
        self.fed.push(token);
        self.at += 1;
        self.script[self.at - 1]
    }
}

impl LogitsModel for Recorder {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let next = if self.at == 0 {
            self.at = 1;
            self.script[0]
        } else {
            assert_eq!(tokens.len(), 1);
            self.feed(tokens[0])
        };
        // Certain even at a temperature above 0 (the script is followed on every path).
        let mut l = vec![0.0; self.vocab];
        l[next as usize] = 100.0;
        Ok(l)
    }

    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        if !self.device {
            return None;
        }
        self.device_calls += 1;
        assert!(max_feeds > 0);
        let (mut input, mut fed) = (first, 0);
        loop {
            let out = self.feed(input);
            fed += 1;
            if !next(out) || fed == max_feeds {
                return Some(Ok(fed));
            }
            input = out;
        }
    }
}

#[test]
fn greedy_decoding_on_the_model_gives_what_the_host_loop_gives() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let script = tok
        .encode("Hello, world! café 🙂 end of the script", false)
        .unwrap();
    let cases: Vec<(usize, Vec<&str>, Vec<u32>)> = vec![
        (script.len(), vec![], vec![]),
        (1, vec![], vec![]),
        (2, vec![], vec![]),
        (5, vec![], vec![]),
        (script.len(), vec!["o, w"], vec![]),
        (script.len(), vec!["🙂"], vec![]),
        (script.len(), vec![], vec![script[0]]),
        (script.len(), vec![], vec![script[4]]),
    ];
    for (max_tokens, stops, stop_tokens) in cases {
        let opts = GenerateOptions {
            max_tokens,
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            stop_tokens: stop_tokens.clone(),
            ..Default::default()
        };
        let run = |device: bool| {
            let mut m = Recorder::new(&script, tok.vocab_size(), device);
            let mut streamed = String::new();
            let g = generate(&mut m, &tok, &[0], &opts, &mut |t| streamed.push_str(t)).unwrap();
            assert_eq!(streamed, g.text);
            (g, m)
        };
        let (host, hm) = run(false);
        let (dev, dm) = run(true);
        let case = format!("max {max_tokens}, stops {stops:?}, stop tokens {stop_tokens:?}");
        assert_eq!(
            (&dev.tokens, &dev.text, &dev.stop),
            (&host.tokens, &host.text, &host.stop),
            "{case}"
        );
        // Every chosen token but the last is fed, on either path.
        assert_eq!(hm.fed, host.tokens[..host.tokens.len() - 1], "{case}");
        assert_eq!(dm.fed, hm.fed, "{case}");
        // The first token comes from the prompt's logits; the model decodes the rest unless
        // the first already ends generation.
        let ends_at_first = host.tokens.len() == 1;
        assert_eq!(dm.device_calls, usize::from(!ends_at_first), "{case}");
    }

    // Sampling, or a repetition penalty, keeps the choice on the host.
    for sampling in [
        SamplingParams {
            temperature: 0.5,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        },
    ] {
        let opts = GenerateOptions {
            max_tokens: 6,
            sampling,
            ..Default::default()
        };
        let mut m = Recorder::new(&script, tok.vocab_size(), true);
        let g = generate(&mut m, &tok, &[0], &opts, &mut |_| {}).unwrap();
        assert_eq!(m.device_calls, 0, "{sampling:?}");
        assert_eq!(g.tokens.len(), 6);
    }
}

#[test]
fn a_cancel_flag_ends_generation_at_the_next_token() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    // A token with text of its own, so that each one streams a piece.
    let token = tok.encode("hello", false).unwrap()[0];
    let options = GenerateOptions {
        max_tokens: 1000,
        ..Default::default()
    };
    let script = vec![token; options.max_tokens + 1];
    for device in [false, true] {
        let cancel = AtomicBool::new(false);
        let run = |on_text: &mut dyn FnMut(&str)| {
            let mut m = Recorder::new(&script, tok.vocab_size(), device);
            let g = generate_cancellable(&mut m, &tok, &[], &[1, 2], &options, &cancel, on_text);
            (g.unwrap(), m)
        };
        let mut pieces = 0;
        let (g, m) = run(&mut |_| {
            pieces += 1;
            if pieces == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        });
        assert_eq!(g.stop, StopReason::Cancelled, "device {device}");
        assert_eq!(g.tokens.len(), 3, "device {device}");
        assert!(!g.text.is_empty());
        // Every chosen token but the last.
        assert_eq!(m.fed.len(), 2, "device {device}");

        // Set before it starts: the prompt is fed and one token chosen.
        let (g, m) = run(&mut |_| {});
        assert_eq!(
            (g.stop, g.tokens.len(), m.fed.len()),
            (StopReason::Cancelled, 1, 0),
            "device {device}"
        );
    }
}

/// A CPU session that notes when each model call begins and ends.
struct Clocked<'a> {
    session: CpuSession<'a>,
    calls: Vec<(std::time::Instant, std::time::Instant)>,
}

impl LogitsModel for Clocked<'_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let start = std::time::Instant::now();
        let logits = self.session.next_logits(tokens);
        self.calls.push((start, std::time::Instant::now()));
        logits
    }
}

#[test]
fn the_first_token_is_timed_when_it_is_chosen() {
    let model = CpuModel::load(&fixtures().join("llama")).unwrap();
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let prompt = reference_ids("prompt");
    let clocked = |context| Clocked {
        session: CpuSession::new(&model, context).unwrap(),
        calls: Vec::new(),
    };
    let mut m = clocked(prompt.len() + 8);
    let options = GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    let g = generate(&mut m, &tok, &prompt, &options, &mut |_| {}).unwrap();
    let first = g.first_token.expect("a token was chosen");
    // Chosen after the prompt's call returned, before the call that feeds it began.
    assert!(m.calls[0].1 <= first && first <= m.calls[1].0);
    // No token asked for: none timed.
    let mut m = clocked(prompt.len());
    let none = GenerateOptions {
        max_tokens: 0,
        ..Default::default()
    };
    let g = generate(&mut m, &tok, &prompt, &none, &mut |_| {}).unwrap();
    assert_eq!(g.first_token, None);
}
