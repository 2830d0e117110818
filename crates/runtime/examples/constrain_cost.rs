//! Host time of constrained decoding's per-step mask (`hoist_runtime::constrain`): a new mask
//! (a state first met) and a step that reuses one, after a few JSON prefixes, on the test
//! fixtures' tokenizer (288 tokens) and on a synthetic 150k vocabulary of text-like pieces
//! (every byte, then words of 2–12 letters with and without a leading space, some punctuation).
//!
//! ```text
//! cargo run --release -p hoist-runtime --example constrain_cost
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_runtime::constrain::{Constraint, JsonGrammar, TokenTable};
use hoist_runtime::sampler::Rng;
use hoist_runtime::tokenizer::Tokenizer;

/// Timed masks per measurement.
const CALLS: u32 = 20;

/// The synthetic vocabulary: token `b` for `b < 256` is the byte `b`.
fn synthetic() -> TokenTable {
    let mut rng = Rng::new(7);
    let mut tokens: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    let alphabet = b"etaoinshrdlucmfwypvbgkjqxz_ETAOINSHRD0123456789\",:{}[].-";
    while tokens.len() < 150_000 {
        let len = 2 + (rng.next_u64() % 11) as usize;
        let mut w: Vec<u8> = Vec::with_capacity(len + 1);
        if rng.next_u64() & 1 == 0 {
            w.push(b' ');
        }
        for _ in 0..len {
            let i = (rng.next_u64() % 26 + if rng.next_u64() & 7 == 0 { 26 } else { 0 }) as usize;
            w.push(alphabet[i.min(alphabet.len() - 1)]);
        }
        tokens.push(Some(w));
    }
    TokenTable::from_tokens(tokens)
}

/// The token of each byte of `text` in `table` (a single-byte token), if every byte has one.
fn byte_tokens(table: &TokenTable, text: &str, tok: Option<&Tokenizer>) -> Option<Vec<u32>> {
    text.bytes()
        .map(|b| match tok {
            None => Some(u32::from(b)),
            Some(t) => t.token_to_id(&(b as char).to_string()),
        })
        .collect::<Option<Vec<u32>>>()
        .filter(|ids| ids.iter().all(|&i| (i as usize) < table.len()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tok = Tokenizer::from_hf_dir(&dir)?;
    let schema = JsonGrammar::from_schema(
        &serde_json::json!({"properties": {"name": {"type": "string"}, "n": {"type": "integer"}}}),
    )?;
    let tables = [
        (
            "fixture (288 tokens)",
            Arc::new(TokenTable::new(&tok)),
            Some(&tok),
        ),
        ("synthetic 150k", Arc::new(synthetic()), None),
    ];
    for (name, table, t) in tables {
        for (g, text) in [
            (JsonGrammar::any(), ""),
            (JsonGrammar::any(), "{"),
            (JsonGrammar::any(), "{\"a\": \"in a string"),
            (JsonGrammar::any(), "[1, 2"),
            (schema.clone(), "{"),
            (schema.clone(), "{\"name\": \"x"),
        ] {
            let Some(ids) = byte_tokens(&table, text, t) else {
                println!("{name}: after {text:?}: a byte without a token of its own, skipped");
                continue;
            };
            let c = Constraint::new(Arc::new(g), table.clone());
            let mut logits = vec![0.0f32; table.len()];
            // A new mask: a fresh matcher each time, brought to the state, masked once.
            let mut new_mask = Duration::ZERO;
            for _ in 0..CALLS {
                let mut m = c.matcher();
                for &id in &ids {
                    if !m.advance(id) {
                        return Err(format!("{name}: {text:?} refused").into());
                    }
                }
                let start = Instant::now();
                m.apply(&mut logits, &[]);
                new_mask += start.elapsed();
            }
            // The same state again: the cached mask.
            let mut m = c.matcher();
            ids.iter().for_each(|&id| {
                m.advance(id);
            });
            m.apply(&mut logits, &[]);
            let start = Instant::now();
            for _ in 0..CALLS {
                m.apply(&mut logits, &[]);
            }
            let cached = start.elapsed() / CALLS;
            let allowed = logits.iter().filter(|l| l.is_finite()).count();
            println!(
                "{name}: after {text:?}: new mask {:?}, cached {cached:?} ({allowed} tokens allowed)",
                new_mask / CALLS
            );
        }
    }
    Ok(())
}
