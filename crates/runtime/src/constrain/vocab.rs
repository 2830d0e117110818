//! Each token's bytes, sorted so that masks walk the vocabulary like a trie.

use tokenizers::decoders::DecoderWrapper;

use crate::tokenizer::Tokenizer;

/// The bytes each token id stands for, in the order a trie walk visits them.
///
/// Tokens without bytes (special tokens, tokens whose bytes cannot be known) are never allowed
/// by a constraint, except the end tokens once the value is complete.
#[derive(Clone, Debug)]
pub struct TokenTable {
    /// All tokens' bytes, one after another.
    data: Vec<u8>,
    /// Each id's `(start, len)` in `data`; len 0: no bytes.
    spans: Vec<(u32, u32)>,
    /// Ids with bytes, sorted by their bytes.
    pub(crate) order: Vec<u32>,
    /// For `order[i]`: bytes in common with `order[i - 1]` (0 for the first).
    pub(crate) shared: Vec<u16>,
    /// Longest token, in bytes.
    pub(crate) longest: usize,
}

impl TokenTable {
    /// The table of `tokenizer`'s vocabulary. It visits every token (byte-level BPE: a table
    /// lookup per character; other decoders: two decodes per token): build it once per
    /// tokenizer and share it.
    pub fn new(tokenizer: &Tokenizer) -> TokenTable {
        let inner = tokenizer.inner();
        let n = tokenizer.vocab_size();
        let added = inner.get_added_tokens_decoder();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let unicode_bytes = byte_level.then(byte_decoder);
        // An anchor in front keeps decoders from dropping a token's own leading space
        // (SentencePiece's `Strip`): the token's bytes are what it adds to the anchor's text.
        let anchor = tokenizer
            .encode("a", false)
            .ok()
            .and_then(|ids| ids.last().copied());
        let anchor_text = anchor.and_then(|a| tokenizer.decode(&[a], false).ok());
        let tokens = (0..n as u32).map(|id| {
            if let Some(t) = added.get(&id) {
                return (!t.special).then(|| t.content.as_bytes().to_vec());
            }
            let piece = inner.id_to_token(id)?;
            if let Some(map) = &unicode_bytes {
                return piece
                    .chars()
                    .map(|c| map.get(c as usize).copied().flatten())
                    .collect();
            }
            if let Some(b) = byte_token(&piece) {
                return Some(vec![b]);
            }
            let (a, before) = (anchor?, anchor_text.as_deref()?);
            let text = tokenizer.decode(&[a, id], false).ok()?;
            let own = text.strip_prefix(before)?;
            // U+FFFD: part of a character, whose bytes the decoder does not give.
            (!own.contains('\u{fffd}')).then(|| own.as_bytes().to_vec())
        });
        TokenTable::from_tokens(tokens)
    }

    /// A table from each id's bytes, in id order (`None`: a token never allowed).
    pub fn from_tokens(tokens: impl IntoIterator<Item = Option<Vec<u8>>>) -> TokenTable {
        let mut data = Vec::new();
        let mut spans = Vec::new();
        for t in tokens {
            let t = t.unwrap_or_default();
            spans.push((data.len() as u32, t.len() as u32));
            data.extend_from_slice(&t);
        }
        let bytes = |id: u32| {
            let (s, l) = spans[id as usize];
            &data[s as usize..(s + l) as usize]
        };
        let mut order: Vec<u32> = (0..spans.len() as u32)
            .filter(|&id| spans[id as usize].1 > 0)
            .collect();
        order.sort_by(|&a, &b| bytes(a).cmp(bytes(b)).then(a.cmp(&b)));
        let mut shared = Vec::with_capacity(order.len());
        let mut longest = 0;
        for (i, &id) in order.iter().enumerate() {
            let cur = bytes(id);
            longest = longest.max(cur.len());
            let common = match i.checked_sub(1) {
                Some(p) => {
                    let prev = bytes(order[p]);
                    prev.iter().zip(cur).take_while(|(x, y)| x == y).count()
                }
                None => 0,
            };
            shared.push(common.min(u16::MAX as usize) as u16);
        }
        TokenTable {
            data,
            spans,
            order,
            shared,
            longest,
        }
    }

    /// Token ids the table covers.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether it covers no token.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes of `id` (empty: none known, or beyond the table).
    pub fn bytes(&self, id: u32) -> &[u8] {
        match self.spans.get(id as usize) {
            Some(&(s, l)) => &self.data[s as usize..(s + l) as usize],
            None => &[],
        }
    }
}

/// `<0xNN>`: a SentencePiece byte-fallback token.
fn byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-level alphabet reversed: for each char code below 324, the byte it stands for.
/// Printable bytes stand for themselves; the others, in order, for U+0100 onwards.
fn byte_decoder() -> Vec<Option<u8>> {
    let mut map = vec![None; 324];
    let mut extra = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as usize
        } else {
            extra += 1;
            255 + extra
        };
        map[code] = Some(b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        let map = byte_decoder();
        assert_eq!(map['Ġ' as usize], Some(b' '));
        assert_eq!(map['Ċ' as usize], Some(b'\n'));
        assert_eq!(map['a' as usize], Some(b'a'));
        assert_eq!(map[0x100], Some(0));
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0x0>"), None);
    }

    #[test]
    fn the_fixture_tokenizers_bytes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        let table = TokenTable::new(&tok);
        assert_eq!(table.len(), tok.vocab_size());
        let id = |s: &str| tok.token_to_id(s).unwrap();
        assert_eq!(table.bytes(id("Ġ")), b" ");
        assert_eq!(table.bytes(id("{")), b"{");
        for &e in tok.eos() {
            assert!(table.bytes(e).is_empty(), "special tokens have no bytes");
        }
        // Sorted, with the shared prefix lengths right.
        for w in table.order.windows(2) {
            assert!(table.bytes(w[0]) <= table.bytes(w[1]));
        }
    }
}
