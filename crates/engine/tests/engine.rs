//! The engine on the runtime's tiny Llama fixture, on the CPU reference: concurrent requests
//! through one handle, KV-cache reuse across a conversation, cancellation, the owner thread's
//! end, and errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hoist_engine::{
    Completion, Device, Engine, EngineError, EngineOptions, Event, Input, Request, Stop,
};
use hoist_runtime::chat::Message;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::generate::{generate, CpuSession, GenerateOptions};
use hoist_runtime::placement::Placement;
use hoist_runtime::sampler::SamplingParams;

fn fixtures() -> PathBuf {
    hoist_testkit::models::runtime_fixtures()
}

/// The Llama fixture with the fixture tokenizer and its chat template beside it.
fn model_dir() -> tempfile::TempDir {
    hoist_testkit::models::chat_model_dir()
}

fn cpu(pool_size: usize) -> EngineOptions {
    EngineOptions {
        device: Device::Cpu,
        pool_size,
        ..EngineOptions::default()
    }
}

fn load(dir: &Path, options: EngineOptions) -> Engine {
    Engine::load(dir, Placement::default(), options).unwrap()
}

/// A greedy request for `messages`.
fn greedy(messages: &[Message], max_tokens: usize) -> Request {
    Request::new(
        Input::Messages(messages.to_vec()),
        SamplingParams::default(),
        max_tokens,
    )
}

/// Runs `request` to its end; returns the completion and the tokens reused from a KV cache.
fn complete(engine: &Engine, request: Request) -> (Completion, usize) {
    let mut cached = None;
    let mut text = String::new();
    for event in engine.generate(request).unwrap() {
        match event {
            Event::Started { cached_tokens, .. } => cached = Some(cached_tokens),
            Event::Text(t) => text.push_str(&t),
            Event::Done(c) => {
                assert_eq!(c.text, text, "the pieces make the text");
                return (c, cached.expect("started before done"));
            }
            Event::Failed(e) => panic!("{e}"),
        }
    }
    panic!("no final event")
}

fn user(text: &str) -> Message {
    Message::new("user", text)
}

#[test]
fn two_threads_generate_through_one_handle() {
    let dir = model_dir();
    let engine = load(dir.path(), cpu(2));
    let prompts = ["Hello there", "The lazy dog"];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| complete(&engine, greedy(&[user(p)], 8)).0.tokens)
        .collect();
    // What the runtime generates on a fresh session: the engine adds nothing of its own.
    let ids = engine
        .encode(&Input::Messages(vec![user(prompts[0])]))
        .unwrap();
    let model = CpuModel::load(dir.path()).unwrap();
    let mut session = CpuSession::new(&model, 256).unwrap();
    let options = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::default(),
        stop_strings: Vec::new(),
        stop_tokens: engine.info().stop_tokens.clone(),
    };
    let ck = engine.checkpoint();
    let g = generate(&mut session, &ck.tokenizer, &ids, &options, &mut |_| {}).unwrap();
    assert_eq!(g.tokens, alone[0]);

    std::thread::scope(|s| {
        let threads: Vec<_> = prompts
            .iter()
            .zip(&alone)
            .map(|(p, want)| {
                let engine = engine.clone();
                s.spawn(move || {
                    for _ in 0..3 {
                        let (c, _) = complete(&engine, greedy(&[user(p)], 8));
                        assert_eq!(&c.tokens, want, "{p}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_follow_up_reuses_the_kv_cache() {
    let dir = model_dir();
    let engine = load(dir.path(), cpu(2));
    let first = [user("Hello there")];
    let p1 = engine.encode(&Input::Messages(first.to_vec())).unwrap();
    // One token: the cache then holds exactly the first prompt, which the follow-up extends.
    let (r1, cached) = complete(&engine, greedy(&first, 1));
    assert_eq!(cached, 0);
    // Another conversation in between takes the pool's other session.
    complete(&engine, greedy(&[user("The lazy dog")], 4));
    let follow_up = [
        user("Hello there"),
        Message::new("assistant", r1.text.as_str()),
        user("How are you?"),
    ];
    let (r2, cached) = complete(&engine, greedy(&follow_up, 6));
    assert_eq!(cached, p1.len(), "the first prompt is reused");
    assert_eq!(r2.stats.cached_tokens, p1.len());
    // The same tokens as without a cache.
    let fresh = load(dir.path(), cpu(1));
    let (want, cached) = complete(&fresh, greedy(&follow_up, 6));
    assert_eq!(cached, 0);
    assert_eq!(r2.tokens, want.tokens);
}

#[test]
fn a_session_key_keeps_its_conversation() {
    let dir = model_dir();
    let engine = load(dir.path(), cpu(1));
    let keyed = |messages: &[Message], key: &str| Request {
        session_key: Some(key.into()),
        ..greedy(messages, 1)
    };
    let (r1, _) = complete(&engine, keyed(&[user("Hello there")], "a"));
    let follow_up = [
        user("Hello there"),
        Message::new("assistant", r1.text.as_str()),
        user("again"),
    ];
    let (_, cached) = complete(&engine, keyed(&follow_up, "a"));
    assert!(cached > 0);
    // One session only: another conversation evicts it.
    complete(&engine, keyed(&[user("The lazy dog")], "b"));
    let (_, cached) = complete(&engine, keyed(&follow_up, "a"));
    assert_eq!(cached, 0);
}

#[test]
fn cancelled_and_dropped_requests_end_early() {
    let dir = model_dir();
    let engine = load(dir.path(), cpu(1));
    let cancel = Arc::new(AtomicBool::new(true));
    let request = Request {
        cancel: Some(cancel),
        ..greedy(&[user("hi")], 8)
    };
    let c = engine
        .generate(request)
        .unwrap()
        .complete(&mut |_| {})
        .unwrap();
    assert_eq!((c.stats.stop, c.tokens.len()), (Stop::Cancelled, 0));
    // A stream dropped unread cancels its request; the engine serves the next one.
    drop(engine.generate(greedy(&[user("hi")], 200)).unwrap());
    let (c, _) = complete(&engine, greedy(&[user("hi")], 8));
    assert_eq!(c.stats.stop, Stop::MaxTokens);
    assert_eq!(c.tokens.len(), 8);
}

#[test]
fn dropping_the_last_handle_ends_the_owner_thread() {
    let dir = model_dir();
    let engine = load(dir.path(), cpu(1));
    // The owner thread holds the checkpoint until it ends.
    let checkpoint = Arc::downgrade(engine.checkpoint());
    let other = engine.clone();
    drop(engine);
    let (c, _) = complete(&other, greedy(&[user("hi")], 2));
    assert_eq!(c.tokens.len(), 2, "a clone still serves");
    drop(other);
    assert!(
        checkpoint.upgrade().is_none(),
        "the drop joined the owner thread, which freed everything"
    );
}

#[test]
fn errors_name_what_to_change() {
    let dir = model_dir();
    let small = EngineOptions {
        context: Some(4),
        ..cpu(1)
    };
    let engine = load(dir.path(), small);
    let long = greedy(&[user("a prompt longer than four tokens")], 1);
    match engine.generate(long) {
        Err(EngineError::PromptTooLong { context: 4, .. }) => {}
        other => panic!("{other:?}"),
    }
    let huge = EngineOptions {
        context: Some(100_000_000_000_000),
        ..cpu(1)
    };
    match Engine::load(dir.path(), Placement::default(), huge) {
        Err(e @ EngineError::KvCache { .. }) => {
            assert!(e.to_string().contains("100000000000000 positions"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a KV cache that large cannot be allocated"),
    }
    let bare = fixtures().join("llama");
    match Engine::load(&bare, Placement::default(), cpu(1)) {
        Err(e @ EngineError::NoTokenizerJson { .. }) => {
            assert!(e.to_string().contains("has no tokenizer.json"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the fixture has no tokenizer"),
    }
    let bad = Request {
        sampling: SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        ..greedy(&[user("hi")], 1)
    };
    assert!(matches!(
        engine.generate(bad),
        Err(EngineError::Sampling(_))
    ));
}
