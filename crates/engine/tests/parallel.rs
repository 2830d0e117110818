//! Several requests decoded together (`EngineOptions::parallel`) on the CPU reference: each
//! request's result is what it gets alone (sampling, constraints and stop strings per request,
//! the batched forward pass equal to the single one), requests overlap up to the bound and no
//! further, a dropped stream ends only its own request, and the bound is checked.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hoist_engine::{
    Completion, Device, Engine, EngineError, EngineOptions, Event, Input, Request, Stop,
};
use hoist_runtime::chat::Message;
use hoist_runtime::constrain::JsonGrammar;
use hoist_runtime::placement::Placement;
use hoist_runtime::sampler::SamplingParams;

fn load(dir: &Path, parallel: usize) -> Result<Engine, EngineError> {
    let options = EngineOptions {
        device: Device::Cpu,
        parallel,
        context: Some(256),
        ..EngineOptions::default()
    };
    Engine::load(dir, Placement::default(), options)
}

/// Requests of every kind: greedy, sampled with seeds, a stop string, a JSON constraint, and
/// token limits that end them at different steps.
fn requests() -> Vec<Request> {
    let sampled = |seed| SamplingParams {
        temperature: 1.2,
        top_k: 0,
        top_p: 0.95,
        seed,
        ..SamplingParams::default()
    };
    let ask = |text: &str, sampling, max_tokens| {
        Request::new(
            Input::Messages(vec![Message::new("user", text)]),
            sampling,
            max_tokens,
        )
    };
    vec![
        ask("Hello there", SamplingParams::default(), 24),
        ask("The lazy dog", sampled(7), 40),
        ask("The lazy dog", sampled(8), 17),
        Request {
            stop_strings: vec![" jum".to_string()],
            ..ask("Stop soon", sampled(3), 60)
        },
        Request {
            constraint: Some(Arc::new(JsonGrammar::any())),
            ..ask("JSON please", sampled(11), 30)
        },
        ask(
            "A much longer prompt than the others, with many more words in it",
            sampled(5),
            9,
        ),
        ask("Hello there", SamplingParams::default(), 33),
    ]
}

/// Runs every request of `requests()` on `engine`, all queued before any is read; with `hold`,
/// behind a long request that is decoding while they are queued (cancelled once they are), so
/// that they join it however fast the engine runs the first of them. Returns their
/// completions, and the long request's.
fn run_all(engine: &Engine, hold: bool) -> (Vec<Completion>, Option<Completion>) {
    let sampled = SamplingParams {
        temperature: 1.2,
        seed: 1,
        ..SamplingParams::default()
    };
    let long = Request::new(
        Input::Messages(vec![Message::new("user", "Go on")]),
        sampled,
        200,
    );
    let mut held = hold.then(|| engine.generate(long).unwrap());
    if let Some(h) = held.as_mut() {
        // Its first text: it decodes now.
        for event in h.by_ref() {
            match event {
                Event::Text(_) => break,
                Event::Done(_) | Event::Failed(_) => panic!("the long request ended at once"),
                Event::Started { .. } => {}
            }
        }
    }
    let streams: Vec<_> = requests()
        .into_iter()
        .map(|r| engine.generate(r).unwrap())
        .collect();
    let held = held.map(|h| {
        h.cancel();
        h.complete(&mut |_| {}).unwrap()
    });
    let done = streams
        .into_iter()
        .map(|s| s.complete(&mut |_| {}).unwrap())
        .collect();
    (done, held)
}

#[test]
fn each_request_gets_what_it_gets_alone() {
    let dir = hoist_testkit::models::chat_model_dir();
    let (alone, _) = run_all(&load(dir.path(), 1).unwrap(), false);
    let parallel = 3;
    let (together, held) = run_all(&load(dir.path(), parallel).unwrap(), true);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.tokens, t.tokens, "request {i}: tokens");
        assert_eq!(a.text, t.text, "request {i}: text");
        assert_eq!(a.stats.stop, t.stats.stop, "request {i}: stop");
        assert_eq!(a.stats.prompt_tokens, t.stats.prompt_tokens);
    }
    assert!(
        matches!(together[3].stats.stop, Stop::StopString(_)),
        "{:?} {:?}",
        together[3].text,
        together[3].stats.stop
    );

    // They ran together, never more than `parallel` at once (the long request among them:
    // they were queued while it decoded, so the first ones joined it).
    let events: Vec<(Instant, i32)> = together
        .iter()
        .chain(&held)
        .flat_map(|c| [(c.stats.started, 1), (c.stats.finished, -1)])
        .collect();
    let mut sorted = events.clone();
    // Ends before starts at the same instant: a place is freed before it is taken.
    sorted.sort_by_key(|&(t, d)| (t, d));
    let mut live = 0;
    let most = sorted
        .iter()
        .map(|&(_, d)| {
            live += d;
            live
        })
        .max();
    assert_eq!(most, Some(parallel as i32), "at most {parallel} at once");
}

#[test]
fn a_dropped_stream_ends_only_its_own_request() {
    let dir = hoist_testkit::models::chat_model_dir();
    let engine = load(dir.path(), 2).unwrap();
    let long = |text: &str| {
        Request::new(
            Input::Messages(vec![Message::new("user", text)]),
            SamplingParams::default(),
            48,
        )
    };
    let alone = engine
        .generate(long("kept"))
        .unwrap()
        .complete(&mut |_| {})
        .unwrap();
    let kept = engine.generate(long("kept")).unwrap();
    let dropped = engine.generate(long("dropped")).unwrap();
    drop(dropped);
    let c = kept.complete(&mut |_| {}).unwrap();
    assert_eq!(c.tokens, alone.tokens, "the other request runs to its end");
    assert_eq!(c.stats.stop, alone.stats.stop);
    // The dropped request's place is free again: two more run.
    let a = engine.generate(long("kept")).unwrap();
    let b = engine.generate(long("kept")).unwrap();
    for s in [a, b] {
        assert_eq!(s.complete(&mut |_| {}).unwrap().tokens, alone.tokens);
    }
}

#[test]
fn the_bound_is_checked() {
    let dir = hoist_testkit::models::chat_model_dir();
    for n in [0, hoist_engine::MAX_PARALLEL + 1] {
        match load(dir.path(), n) {
            Err(e @ EngineError::Parallel { .. }) => {
                assert!(e.to_string().contains("ask for 1 to 64"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("parallel {n} is out of range"),
        }
    }
}
