//! The CPU reference's batched forward pass: sequences at different positions (a prefill beside
//! single decode tokens) through one pass give, bit for bit, the logits each gives alone, on a
//! dense model, a mixture of experts, a sliding window and the hybrid DeltaNet models (whose
//! recurrent states are per sequence).

mod common;

use common::fixtures;
use hoist_runtime::cpu::{CpuModel, ForwardError, Sequence};
use hoist_runtime::generate::{CpuSession, LogitsModel};

/// Three sequences' histories (prompts already in their caches) and the tokens each is fed in
/// the batched pass: a longer prefill, single decode tokens, a first prompt on an empty cache.
const CASES: [(&[u32], &[u32]); 3] = [
    (&[1, 5, 9, 2, 7], &[3]),
    (&[4, 4, 8], &[6, 2, 11, 5]),
    (&[], &[10, 3]),
];

#[test]
fn a_batch_equals_each_sequence_alone() {
    for name in ["llama", "qwen3_moe", "mistral", "qwen3_next", "qwen3_5_moe"] {
        let model = CpuModel::load(&fixtures().join(name)).unwrap();
        let vocab = model.config.vocab_size;
        let mut alone = Vec::new();
        let mut caches = Vec::new();
        for (history, fed) in CASES {
            let mut cache = model.new_cache(16).unwrap();
            let mut solo = model.new_cache(16).unwrap();
            if !history.is_empty() {
                model.forward(history, &mut cache).unwrap();
                model.forward(history, &mut solo).unwrap();
            }
            alone.extend(model.forward(fed, &mut solo).unwrap());
            caches.push(cache);
        }
        let mut seqs: Vec<Sequence<'_>> = caches
            .iter_mut()
            .zip(CASES)
            .map(|(cache, (_, tokens))| Sequence { tokens, cache })
            .collect();
        let together = model.forward_batch(&mut seqs).unwrap();
        assert_eq!(together.len(), 7 * vocab, "{name}");
        assert!(together == alone, "{name}: batched logits differ");
        for (cache, (history, fed)) in caches.iter().zip(CASES) {
            assert_eq!(cache.len(), history.len() + fed.len(), "{name}");
        }
    }
}

#[test]
fn sessions_step_together() {
    let model = CpuModel::load(&fixtures().join("qwen3_next")).unwrap();
    let mut a = CpuSession::new(&model, 8).unwrap();
    let mut b = CpuSession::new(&model, 8).unwrap();
    let mut solo = CpuSession::new(&model, 8).unwrap();
    a.next_logits(&[1, 2, 3]).unwrap();
    let first = CpuSession::next_logits_batch(&mut [&mut a, &mut b], &[&[4], &[1, 2]]).unwrap();
    solo.next_logits(&[1, 2, 3]).unwrap();
    assert!(first[0] == solo.next_logits(&[4]).unwrap());
    solo.clear();
    assert!(first[1] == solo.next_logits(&[1, 2]).unwrap());
    assert_eq!(first[0].len(), model.config.vocab_size);
}

#[test]
fn nothing_changes_when_one_sequence_does_not_fit() {
    let model = CpuModel::load(&fixtures().join("llama")).unwrap();
    let mut roomy = model.new_cache(8).unwrap();
    let mut full = model.new_cache(2).unwrap();
    let mut seqs = [
        Sequence {
            tokens: &[1, 2],
            cache: &mut roomy,
        },
        Sequence {
            tokens: &[1, 2, 3],
            cache: &mut full,
        },
    ];
    match model.forward_batch(&mut seqs) {
        Err(ForwardError::ContextFull {
            needed: 3,
            capacity: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        roomy.is_empty() && full.is_empty(),
        "checked before any change"
    );
    let mut seqs = [Sequence {
        tokens: &[1, u32::MAX],
        cache: &mut roomy,
    }];
    assert!(matches!(
        model.forward_batch(&mut seqs),
        Err(ForwardError::Token {
            token: u32::MAX,
            ..
        })
    ));
    assert!(roomy.is_empty());
}
