//! A byte-level pushdown automaton for JSON (RFC 8259) over a compiled [`JsonGrammar`].
//!
//! [`State::step`] takes one byte and says whether the text so far is still a prefix of a
//! value the grammar accepts; [`State::is_complete`] says whether it is a whole one. The state
//! is small and `Hash + Eq` (a stack of open containers and the current lexeme), so masks can
//! be cached per state.
//!
//! Beyond the grammar, three limits keep a model from running away: at most [`MAX_WS`]
//! whitespace bytes in a row between tokens of JSON, at most [`MAX_DEPTH`] open containers, and
//! nothing after the top-level value but the end of the sequence. Strings must be valid UTF-8
//! and `\u` escapes must pair surrogates (as `serde_json` requires).

use super::schema::{JsonGrammar, ARRAY, BOOLEAN, INTEGER, NULL, NUMBER, OBJECT, STRING};

/// Most whitespace bytes in a row outside strings.
pub const MAX_WS: u8 = 32;
/// Most containers open at once.
pub const MAX_DEPTH: usize = 64;

/// An open container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Frame {
    /// An object of `node`, with the bits of its declared keys already used.
    Obj { node: u32, seen: u64 },
    /// An array of `node`, with `items` values begun so far.
    Arr { node: u32, items: u16 },
}

/// Where a `\` escape is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and `n` hex digits; `d`: the first was `d`/`D`; `high`/`low`: the escape is a
    /// high/low surrogate (known after two digits).
    Hex {
        n: u8,
        d: bool,
        high: bool,
    },
}

/// Which literals a [`Lex::Lit`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LitSet {
    /// The `enum`/`const` values of a node.
    Node(u32),
    /// The declared keys of the object `node` (the top frame).
    Keys(u32),
    /// `false`, `true`.
    Bools,
    /// `null`.
    Null,
}

/// Where in a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Num {
    Begin,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    EDigits,
}

impl Num {
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::EDigits)
    }

    fn next(self, b: u8, int_only: bool) -> Option<Num> {
        let digit = b.is_ascii_digit();
        Some(match (self, b) {
            (Num::Begin, b'-') => Num::Minus,
            (Num::Begin | Num::Minus, b'0') => Num::Zero,
            (Num::Begin | Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, b'.') if !int_only => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !int_only => Num::E,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::EDigits, _) if digit => Num::EDigits,
            _ => return None,
        })
    }
}

/// The current lexeme, or what comes next between lexemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lex {
    /// A value of `node` comes next.
    Value { node: u32 },
    /// After `[`: an item or `]`.
    ArrFirst,
    /// In an object: a key (or `}` when `first`).
    Key { first: bool },
    /// After a key: `:`, then a value of `next`.
    Colon { next: u32 },
    /// A value ended: `,` or the top container's closer; at top level, nothing.
    After,
    /// In a string (`key`: an undeclared key). `utf8`: continuation bytes still due (low
    /// nibble) and the range of the next one (high nibble, 0: any);
    /// `need_low`: a high surrogate escape was just read, so `\uDC00`–`\uDFFF` must follow.
    Str {
        key: bool,
        esc: Esc,
        utf8: u8,
        need_low: bool,
    },
    /// Matching one of a sorted set of literals: those in `lo..hi` share the `pos` bytes read.
    Lit {
        set: LitSet,
        lo: u16,
        hi: u16,
        pos: u16,
    },
    /// In a number.
    Num { int_only: bool, phase: Num },
}

/// What one branch of [`State::step`] decided.
enum Flow {
    Accept,
    Reject,
    /// The lexeme ended before this byte: look at it again in the new state.
    Again,
}

/// The automaton's state: open containers, the current lexeme, whitespace in a row.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    stack: Vec<Frame>,
    lex: Lex,
    ws: u8,
}

// By hand for `clone_from`, which reuses the stack's memory (decoding copies the state at each
// token: `Matcher::advance`).
impl Clone for State {
    fn clone(&self) -> State {
        State {
            stack: self.stack.clone(),
            lex: self.lex,
            ws: self.ws,
        }
    }

    fn clone_from(&mut self, source: &State) {
        self.stack.clone_from(&source.stack);
        self.lex = source.lex;
        self.ws = source.ws;
    }
}

impl State {
    /// Before any text.
    pub fn new(g: &JsonGrammar) -> State {
        State {
            stack: Vec::with_capacity(8),
            lex: Lex::Value { node: g.root },
            ws: 0,
        }
    }

    /// Whether the text so far is a whole value the grammar accepts.
    pub fn is_complete(&self, g: &JsonGrammar) -> bool {
        if !self.stack.is_empty() {
            return false;
        }
        match self.lex {
            Lex::After => true,
            Lex::Num { phase, .. } => phase.can_end(),
            Lex::Lit { set, lo, pos, .. } => lit_complete(g, set, lo, pos),
            _ => false,
        }
    }

    /// Feeds `bytes`; false (the state then unusable) as soon as one is refused.
    pub fn feed(&mut self, g: &JsonGrammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(g, b))
    }

    /// Whether [`State::step`] with `b` would accept it and leave the state as it is: plain
    /// ASCII inside a string, a digit inside a run of digits. The mask walk skips copying the
    /// state for these, which are most bytes of most tokens inside strings.
    pub fn keeps(&self, b: u8) -> bool {
        match self.lex {
            Lex::Str {
                esc: Esc::None,
                utf8: 0,
                need_low: false,
                ..
            } => (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\',
            Lex::Num {
                phase: Num::Int | Num::Frac | Num::EDigits,
                ..
            } => b.is_ascii_digit(),
            _ => false,
        }
    }

    /// Feeds one byte: whether the text is still a prefix of an accepted value. On false the
    /// state is unusable (callers step a copy).
    pub fn step(&mut self, g: &JsonGrammar, b: u8) -> bool {
        loop {
            let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
            if ws && self.allows_ws() {
                if self.ws >= MAX_WS {
                    return false;
                }
                self.ws += 1;
                return true;
            }
            self.ws = 0;
            let flow = match self.lex {
                Lex::Value { node } => self.start_value(g, node, b),
                Lex::ArrFirst => match self.stack.last_mut() {
                    Some(Frame::Arr { node, items }) => {
                        let n = &g.nodes[*node as usize];
                        if b == b']' && n.min_items > 0 {
                            Flow::Reject
                        } else if b == b']' {
                            self.stack.pop();
                            self.lex = Lex::After;
                            Flow::Accept
                        } else if n.max_items == 0 {
                            Flow::Reject
                        } else {
                            *items = 1;
                            self.lex = Lex::Value { node: n.items };
                            Flow::Again
                        }
                    }
                    _ => Flow::Reject,
                },
                Lex::Key { first } => self.key(g, first, b),
                Lex::Colon { next } => {
                    if b == b':' {
                        self.lex = Lex::Value { node: next };
                        Flow::Accept
                    } else {
                        Flow::Reject
                    }
                }
                Lex::After => self.after(g, b),
                Lex::Str {
                    key,
                    esc,
                    utf8,
                    need_low,
                } => self.string(g, key, esc, utf8, need_low, b),
                Lex::Lit { set, lo, hi, pos } => self.literal(g, set, lo, hi, pos, b),
                Lex::Num { int_only, phase } => match phase.next(b, int_only) {
                    Some(phase) => {
                        self.lex = Lex::Num { int_only, phase };
                        Flow::Accept
                    }
                    None if phase.can_end() => {
                        self.lex = Lex::After;
                        Flow::Again
                    }
                    None => Flow::Reject,
                },
            };
            match flow {
                Flow::Accept => return true,
                Flow::Reject => return false,
                Flow::Again => {}
            }
        }
    }

    fn allows_ws(&self) -> bool {
        match self.lex {
            Lex::Value { .. } | Lex::ArrFirst | Lex::Key { .. } | Lex::Colon { .. } => true,
            Lex::After => !self.stack.is_empty(),
            _ => false,
        }
    }

    fn start_value(&mut self, g: &JsonGrammar, node: u32, b: u8) -> Flow {
        let n = &g.nodes[node as usize];
        if let Some(lits) = &n.literals {
            self.lex = Lex::Lit {
                set: LitSet::Node(node),
                lo: 0,
                hi: lits.len() as u16,
                pos: 0,
            };
            return Flow::Again;
        }
        let k = n.kinds;
        match b {
            b'{' | b'[' if self.stack.len() >= MAX_DEPTH => Flow::Reject,
            b'{' if k & OBJECT != 0 => {
                self.stack.push(Frame::Obj { node, seen: 0 });
                self.lex = Lex::Key { first: true };
                Flow::Accept
            }
            b'[' if k & ARRAY != 0 => {
                self.stack.push(Frame::Arr { node, items: 0 });
                self.lex = Lex::ArrFirst;
                Flow::Accept
            }
            b'"' if k & STRING != 0 => {
                self.lex = Lex::Str {
                    key: false,
                    esc: Esc::None,
                    utf8: 0,
                    need_low: false,
                };
                Flow::Accept
            }
            b'-' | b'0'..=b'9' if k & (NUMBER | INTEGER) != 0 => {
                self.lex = Lex::Num {
                    int_only: k & NUMBER == 0,
                    phase: Num::Begin,
                };
                Flow::Again
            }
            b't' | b'f' if k & BOOLEAN != 0 => {
                self.lex = Lex::Lit {
                    set: LitSet::Bools,
                    lo: 0,
                    hi: 2,
                    pos: 0,
                };
                Flow::Again
            }
            b'n' if k & NULL != 0 => {
                self.lex = Lex::Lit {
                    set: LitSet::Null,
                    lo: 0,
                    hi: 1,
                    pos: 0,
                };
                Flow::Again
            }
            _ => Flow::Reject,
        }
    }

    fn key(&mut self, g: &JsonGrammar, first: bool, b: u8) -> Flow {
        let Some(&Frame::Obj { node, .. }) = self.stack.last() else {
            return Flow::Reject;
        };
        let n = &g.nodes[node as usize];
        match b {
            b'}' if first => self.close_object(g),
            b'"' if n.declared => {
                self.lex = Lex::Lit {
                    set: LitSet::Keys(node),
                    lo: 0,
                    hi: n.keys.len() as u16,
                    pos: 0,
                };
                Flow::Again
            }
            b'"' => {
                self.lex = Lex::Str {
                    key: true,
                    esc: Esc::None,
                    utf8: 0,
                    need_low: false,
                };
                Flow::Accept
            }
            _ => Flow::Reject,
        }
    }

    fn close_object(&mut self, g: &JsonGrammar) -> Flow {
        match self.stack.last() {
            Some(&Frame::Obj { node, seen }) if g.nodes[node as usize].required & !seen == 0 => {
                self.stack.pop();
                self.lex = Lex::After;
                Flow::Accept
            }
            _ => Flow::Reject,
        }
    }

    fn after(&mut self, g: &JsonGrammar, b: u8) -> Flow {
        match (self.stack.last(), b) {
            (Some(&Frame::Obj { node, seen }), b',') => {
                let n = &g.nodes[node as usize];
                // A comma only where a key can still follow.
                let all = if n.keys.len() >= 64 {
                    u64::MAX
                } else {
                    (1u64 << n.keys.len()) - 1
                };
                if !n.declared || seen & all != all {
                    self.lex = Lex::Key { first: false };
                    Flow::Accept
                } else {
                    Flow::Reject
                }
            }
            (Some(Frame::Obj { .. }), b'}') => self.close_object(g),
            (Some(&Frame::Arr { node, items }), b',') => {
                let n = &g.nodes[node as usize];
                if items >= n.max_items {
                    return Flow::Reject;
                }
                if let Some(Frame::Arr { items, .. }) = self.stack.last_mut() {
                    *items += 1;
                }
                self.lex = Lex::Value { node: n.items };
                Flow::Accept
            }
            (Some(&Frame::Arr { node, items }), b']') => {
                if items < g.nodes[node as usize].min_items {
                    return Flow::Reject;
                }
                self.stack.pop();
                self.lex = Lex::After;
                Flow::Accept
            }
            _ => Flow::Reject,
        }
    }

    fn string(
        &mut self,
        g: &JsonGrammar,
        key: bool,
        esc: Esc,
        utf8: u8,
        need_low: bool,
        b: u8,
    ) -> Flow {
        let (mut esc, mut utf8, mut need_low) = (esc, utf8, need_low);
        if utf8 > 0 {
            // The low nibble holds the bytes still due, the high one the range of the next
            // (the second byte of E0, ED, F0 and F4 is narrower: no overlong forms, no
            // surrogates, nothing above U+10FFFF).
            let (lo, hi) = match utf8 >> 4 {
                1 => (0xa0, 0xbf),
                2 => (0x80, 0x9f),
                3 => (0x90, 0xbf),
                4 => (0x80, 0x8f),
                _ => (0x80, 0xbf),
            };
            if !(lo..=hi).contains(&b) {
                return Flow::Reject;
            }
            utf8 = (utf8 & 0xf) - 1;
        } else {
            match esc {
                Esc::None => match b {
                    _ if need_low && b != b'\\' => return Flow::Reject,
                    b'"' => {
                        self.lex = if key {
                            let values = match self.stack.last() {
                                Some(&Frame::Obj { node, .. }) => g.nodes[node as usize].values,
                                _ => return Flow::Reject,
                            };
                            Lex::Colon { next: values }
                        } else {
                            Lex::After
                        };
                        return Flow::Accept;
                    }
                    b'\\' => esc = Esc::Backslash,
                    // Control characters must be escaped (JSON lets DEL, 0x7f, stand);
                    // a continuation byte without its lead is not UTF-8.
                    0..=0x1f | 0x80..=0xbf => return Flow::Reject,
                    0xc2..=0xdf => utf8 = 1,
                    0xe0 => utf8 = 0x12,
                    0xed => utf8 = 0x22,
                    0xe1..=0xef => utf8 = 2,
                    0xf0 => utf8 = 0x33,
                    0xf4 => utf8 = 0x43,
                    0xf1..=0xf3 => utf8 = 3,
                    0xc0 | 0xc1 | 0xf5..=0xff => return Flow::Reject,
                    _ => {}
                },
                Esc::Backslash => match b {
                    b'u' => {
                        esc = Esc::Hex {
                            n: 0,
                            d: false,
                            high: false,
                        }
                    }
                    _ if need_low => return Flow::Reject,
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => esc = Esc::None,
                    _ => return Flow::Reject,
                },
                Esc::Hex { n, d, high } => {
                    let v = match (b as char).to_digit(16) {
                        Some(v) => v,
                        None => return Flow::Reject,
                    };
                    let (mut d, mut high) = (d, high);
                    match n {
                        0 => {
                            d = v == 0xd;
                            if need_low && !d {
                                return Flow::Reject;
                            }
                        }
                        1 if d => {
                            let low = v >= 0xc;
                            high = !low && v >= 0x8;
                            // A low surrogate only right after a high one; a high one not then.
                            if low != need_low {
                                return Flow::Reject;
                            }
                        }
                        1 if need_low => return Flow::Reject,
                        _ => {}
                    }
                    if n == 3 {
                        esc = Esc::None;
                        need_low = high;
                    } else {
                        esc = Esc::Hex { n: n + 1, d, high };
                    }
                }
            }
        }
        self.lex = Lex::Str {
            key,
            esc,
            utf8,
            need_low,
        };
        Flow::Accept
    }

    fn literal(&mut self, g: &JsonGrammar, set: LitSet, lo: u16, hi: u16, pos: u16, b: u8) -> Flow {
        let lits = literals(g, set);
        let p = pos as usize;
        // Sorted, sharing `pos` bytes: their byte at `p` (none first) never decreases, so those
        // with `b` next are a contiguous run, found by two binary searches (an enum may hold
        // thousands of values, and every token of a mask steps through here).
        let run = &lits[lo as usize..hi as usize];
        let i = lo as usize + run.partition_point(|l| l.get(p).is_none_or(|&c| c < b));
        let j = lo as usize + run.partition_point(|l| l.get(p).is_none_or(|&c| c <= b));
        let usable = match (set, self.stack.last()) {
            (LitSet::Keys(_), Some(&Frame::Obj { seen, .. })) => {
                (i..j).any(|k| seen & (1 << k) == 0)
            }
            _ => i < j,
        };
        if usable {
            self.lex = Lex::Lit {
                set,
                lo: i as u16,
                hi: j as u16,
                pos: pos + 1,
            };
            return Flow::Accept;
        }
        if !lit_complete(g, set, lo, pos) {
            return Flow::Reject;
        }
        // The literal ended before `b`.
        match (set, self.stack.last_mut()) {
            (LitSet::Keys(node), Some(Frame::Obj { seen, .. })) => {
                *seen |= 1 << lo;
                self.lex = Lex::Colon {
                    next: g.nodes[node as usize].key_nodes[lo as usize],
                };
            }
            _ => self.lex = Lex::After,
        }
        Flow::Again
    }
}

fn literals(g: &JsonGrammar, set: LitSet) -> &[Vec<u8>] {
    match set {
        LitSet::Node(n) => g.nodes[n as usize].literals.as_deref().unwrap_or_default(),
        LitSet::Keys(n) => &g.nodes[n as usize].keys,
        LitSet::Bools => &g.bools,
        LitSet::Null => &g.null,
    }
}

/// Whether the literal run starting at `lo` holds one of exactly `pos` bytes (the shortest of
/// a run sharing a prefix sorts first).
fn lit_complete(g: &JsonGrammar, set: LitSet, lo: u16, pos: u16) -> bool {
    literals(g, set)
        .get(lo as usize)
        .is_some_and(|l| l.len() == pos as usize)
}
