use serde_json::json;

use super::*;

/// Whether `text` is a valid prefix under `g`, and whether it is complete.
fn check(g: &JsonGrammar, text: &str) -> (bool, bool) {
    let mut s = State::new(g);
    let ok = s.feed(g, text.as_bytes());
    (ok, ok && s.is_complete(g))
}

fn prefix(g: &JsonGrammar, text: &str) -> bool {
    check(g, text).0
}

fn complete(g: &JsonGrammar, text: &str) -> bool {
    check(g, text).1
}

#[test]
fn any_json_prefixes_and_completion() {
    let g = JsonGrammar::any();
    for text in [
        r#"{"a": [1, -2.5e+3, true, false, null, "x\n\"\u00e9"], "b": {}}"#,
        "[]",
        "[[[]], [{}], [[1, [2]]]]",
        r#""plain""#,
        "0",
        "-0.0E-12",
        "true",
        "null",
        "  {\n  \"k\" :\t[ ]\n}",
        r#""\ud83d\ude00 é 中 😀""#,
        "12e5",
    ] {
        assert!(complete(&g, text), "{text}");
        assert!(
            serde_json::from_str::<serde_json::Value>(text).is_ok(),
            "{text}"
        );
        // Every proper prefix is a prefix, not (except numbers) complete.
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                assert!(prefix(&g, &text[..cut]), "{:?}", &text[..cut]);
            }
        }
    }
    for text in ["{\"a\"", "[1,", "\"abc", "-", "1.", "1e", "1e+", "tru", "{"] {
        assert!(prefix(&g, text) && !complete(&g, text), "{text}");
    }
}

#[test]
fn invalid_json_is_refused() {
    let g = JsonGrammar::any();
    for text in [
        "}",
        "{,",
        "{\"a\" 1",
        "{\"a\":}",
        "[1,]",
        "[1 2]",
        "01",
        "-a",
        "1.e5",
        ".5",
        "+1",
        "tru e",
        "nul1",
        "{\"a\":1}}",
        "{} ",
        "[] x",
        "\"\\x\"",
        "\"\\u12g\"",
        "\"a\nb\"",
        "{'a': 1}",
        "[1,,2]",
        "{\"a\":1,}",
    ] {
        assert!(!prefix(&g, text), "{text:?} accepted");
    }
}

#[test]
fn strings_are_utf8_and_surrogates_pair() {
    let g = JsonGrammar::any();
    assert!(!prefix(&g, "\"\\udc00"), "a lone low surrogate");
    assert!(
        !prefix(&g, "\"\\ud800\""),
        "a high surrogate not followed by a low one"
    );
    assert!(!prefix(&g, "\"\\ud800\\n"));
    assert!(!prefix(&g, "\"\\ud800\\u0041"));
    assert!(complete(&g, "\"\\ud800\\udc00\""));
    assert!(complete(&g, "\"\\uD834\\uDD1E\""));
    let mut s = State::new(&g);
    assert!(s.feed(&g, b"\""));
    assert!(!s.clone().feed(&g, &[0x80]), "a lone continuation byte");
    assert!(!s.clone().feed(&g, &[0xc3, b'a']), "a cut character");
    assert!(
        s.clone().feed(&g, &[0xc3]),
        "the first byte of é, its second due"
    );
    assert!(s.feed(&g, &[0xc3, 0xa9, b'"']) && s.is_complete(&g));
}

#[test]
fn whitespace_and_depth_are_bounded() {
    let g = JsonGrammar::any();
    let ws = " ".repeat(MAX_WS as usize);
    assert!(prefix(&g, &format!("[{ws}1")));
    assert!(!prefix(&g, &format!("[{ws} 1")));
    assert!(prefix(&g, &"[".repeat(MAX_DEPTH)));
    assert!(!prefix(&g, &"[".repeat(MAX_DEPTH + 1)));
    // Inside strings, spaces are text: no bound.
    assert!(complete(&g, &format!("\"{ws}{ws}\"")));
}

#[test]
fn schema_objects_take_declared_keys_once_and_need_the_required() {
    let g = JsonGrammar::from_schema(&json!({
        "type": "object",
        "title": "Person",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["cat", "dog", 3, null]},
            "ok": {"type": ["boolean", "null"]},
            "pos": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
        },
        "required": ["name", "age"],
    }))
    .unwrap();
    for text in [
        r#"{"name": "Ann", "age": 31}"#,
        r#"{"age": -4, "name": "", "tags": ["a", "b"], "kind": "dog"}"#,
        r#"{"name": "x", "age": 0, "kind": 3, "ok": null, "pos": {"x": 1.5e2}}"#,
        r#"{"name": "x", "age": 0, "kind": null, "ok": true}"#,
    ] {
        assert!(complete(&g, text), "{text}");
    }
    for text in [
        r#"{"name": "Ann"}"#,            // age is required
        r#"{"name": "Ann", "age": 1.5"#, // an integer
        r#"{"name": "Ann", "age": 1e3"#, // an integer, no exponent
        r#"{"name": "Ann", "name""#,     // once
        r#"{"nam": 1"#,                  // not declared
        r#"{"other""#,                   // not declared
        r#"{"name": 5"#,                 // a string
        r#"{"kind": "cow""#,             // not in the enum
        r#"{"kind": "ca""#,              // not in the enum
        r#"{"ok": 1"#,                   // boolean or null
        r#"{"pos": {}"#,                 // x is required
        r#"{"tags": [1"#,                // items are strings
        r#"["#,                          // an object
    ] {
        assert!(!complete(&g, text) && !prefix(&g, text), "{text}");
    }
    assert!(prefix(&g, r#"{"na"#) && prefix(&g, r#"{"kind": "c"#));
    // No comma once every key is used.
    let g = JsonGrammar::from_schema(&json!({"properties": {"a": {"const": 1}}})).unwrap();
    assert!(complete(&g, r#"{"a": 1}"#) && complete(&g, "{}"));
    assert!(!prefix(&g, r#"{"a": 1,"#) && !prefix(&g, r#"{"a": 2"#));
}

#[test]
fn schema_enums_that_prefix_each_other() {
    let g = JsonGrammar::from_schema(&json!({"type": "array", "items": {"enum": [1, 12, "a"]}}))
        .unwrap();
    assert!(complete(&g, "[1, 12, \"a\", 1]"));
    assert!(!prefix(&g, "[13") && !prefix(&g, "[2") && !prefix(&g, "[120"));
    let g = JsonGrammar::from_schema(&json!({"type": "string", "enum": ["x", 1]})).unwrap();
    assert!(
        complete(&g, "\"x\"") && !prefix(&g, "1"),
        "the type filters the enum"
    );
    let g = JsonGrammar::from_schema(&json!({"type": "integer"})).unwrap();
    assert!(complete(&g, "-12") && !prefix(&g, "1.") && !prefix(&g, "\"1\""));
}

#[test]
fn schema_outside_the_subset_names_the_keyword() {
    for (schema, keyword) in [
        (json!({"type": "string", "pattern": "a+"}), "pattern"),
        (json!({"anyOf": [{"type": "string"}]}), "anyOf"),
        (json!({"properties": {"a": {"$ref": "#/$defs/x"}}}), "$ref"),
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (json!({"type": "array", "minItems": -1}), "minItems"),
        (json!({"type": "array", "maxItems": 1.5}), "maxItems"),
        (json!({"minItems": 3, "maxItems": 2}), "minItems"),
        (json!({"maxItems": 70000}), "maxItems"),
        (json!({"type": "date"}), "type"),
        (json!({"required": ["a"]}), "required"),
        (json!({"enum": []}), "enum"),
        (json!({"items": [{}]}), "items"),
        (json!(false), "false"),
        (json!(3), "schema"),
    ] {
        let e = JsonGrammar::from_schema(&schema).unwrap_err();
        assert_eq!(e.keyword(), keyword, "{schema}");
        assert!(e.to_string().contains(keyword), "{e}");
    }
    let e = JsonGrammar::from_schema(&json!({"properties": {"a/b": {"maximum": 3}}})).unwrap_err();
    assert!(e.to_string().contains("#/properties/a~1b"), "{e}");
    assert!(JsonGrammar::from_schema(&json!({})).is_ok());
    assert!(JsonGrammar::from_schema(&json!(true)).is_ok());
    // Literals past the automaton's 16-bit counters: refused, not wrapped.
    let long = "x".repeat(MAX_LITERALS);
    let e = JsonGrammar::from_schema(&json!({"const": long})).unwrap_err();
    assert_eq!(e.keyword(), "const", "{e}");
    let many: Vec<usize> = (0..=MAX_LITERALS).collect();
    let e = JsonGrammar::from_schema(&json!({"enum": many})).unwrap_err();
    assert_eq!(e.keyword(), "enum", "{e}");
    let fits: Vec<usize> = (0..1000).collect();
    assert!(JsonGrammar::from_schema(&json!({"enum": fits})).is_ok());
}

#[test]
fn array_bounds_count_items_at_every_depth() {
    let g = JsonGrammar::from_schema(&json!({"minItems": 1, "maxItems": 3})).unwrap();
    assert!(!prefix(&g, "[]") && !prefix(&g, "[ ]"));
    assert!(prefix(&g, "[") && !complete(&g, "["));
    assert!(complete(&g, "[1]") && complete(&g, "[1, [], 3]"));
    assert!(!prefix(&g, "[1,2,3,") && prefix(&g, "[1,2,3"));
    // Inner arrays are counted on their own frames.
    let nested = json!({"type": "array", "maxItems": 2,
        "items": {"type": "array", "minItems": 2, "items": {"type": "integer"}}});
    let g = JsonGrammar::from_schema(&nested).unwrap();
    assert!(complete(&g, "[[1,2],[3,4,5]]"));
    assert!(!prefix(&g, "[[1]]") && !prefix(&g, "[[1,2],[3,4],"));
    assert!(complete(&g, "[]"), "the outer array has no minimum");
    let none = JsonGrammar::from_schema(&json!({"type": "array", "maxItems": 0})).unwrap();
    assert!(complete(&none, "[]") && !prefix(&none, "[1"));
}

#[test]
fn large_enums_match_exactly() {
    let values: Vec<String> = (0..5000).map(|i| format!("v{i}")).collect();
    let g = JsonGrammar::from_schema(&json!({"enum": values})).unwrap();
    for ok in ["\"v0\"", "\"v12\"", "\"v4999\"", "\"v999\""] {
        assert!(complete(&g, ok), "{ok}");
    }
    assert!(prefix(&g, "\"v1") && !complete(&g, "\"v1"));
    for bad in ["\"v5000\"", "\"w", "\"v01\"", "\"v49990"] {
        assert!(!prefix(&g, bad), "{bad}");
    }
}

/// A toy vocabulary: single bytes and a few longer pieces, some of which straddle JSON tokens.
fn toy_table() -> (Vec<&'static str>, Arc<TokenTable>) {
    let words = vec![
        "{", "}", "[", "]", "\"", ":", ",", " ", "a", "b", "1", "0", ".", "e", "-", "true",
        "false", "null", "\":", "\",", "{\"", "\"}", "ab", "tr", "ue", "\\", "u", "n", "é",
    ];
    let mut tokens: Vec<Option<Vec<u8>>> =
        words.iter().map(|w| Some(w.as_bytes().to_vec())).collect();
    tokens.push(None); // an end token
    tokens.push(Some(vec![0xc3])); // the first byte of é alone
    tokens.push(Some(vec![0xa9])); // and its second
    (words, Arc::new(TokenTable::from_tokens(tokens)))
}

#[test]
fn masks_match_a_check_of_every_token() {
    let (words, table) = toy_table();
    let eos = words.len() as u32;
    for (grammar, texts) in [
        (
            JsonGrammar::any(),
            vec!["", "{", "{\"a", "{\"ab\":", "{\"a\": [1", "[1.", "[tr", "\"\u{e9}", "[\"", "1"],
        ),
        (
            JsonGrammar::from_schema(&json!({"properties": {"ab": {"type": "boolean"}, "b": {"type": "null"}}, "required": ["b"]})).unwrap(),
            vec!["", "{", "{\"a", "{\"ab\":", "{\"ab\": true, ", "{\"b\":null"],
        ),
    ] {
        let c = Constraint::new(Arc::new(grammar.clone()), table.clone());
        for text in texts {
            let mut m = c.matcher();
            let mut state = State::new(&grammar);
            assert!(state.feed(&grammar, text.as_bytes()), "{text}");
            m.state = state.clone();
            for id in 0..table.len() as u32 {
                let bytes = table.bytes(id);
                let expect = !bytes.is_empty() && state.clone().feed(&grammar, bytes);
                assert_eq!(m.allows(id), expect, "after {text:?}: token {id} {bytes:?}");
            }
            // End tokens only once complete.
            let mut logits = vec![0.0; table.len()];
            assert!(m.apply(&mut logits, &[eos]));
            assert_eq!(logits[eos as usize].is_finite(), state.is_complete(&grammar), "{text:?}");
        }
    }
}

#[test]
fn a_matcher_follows_sampled_tokens_and_caches_masks() {
    let (words, table) = toy_table();
    let id = |w: &str| words.iter().position(|x| *x == w).unwrap() as u32;
    let c = Constraint::new(Arc::new(JsonGrammar::any()), table.clone());
    let mut m = c.matcher();
    for w in ["[", "\"", "a", "a", "a", "b", "a", "\",", "1", "]"] {
        let mut logits = vec![0.0; table.len()];
        assert!(m.apply(&mut logits, &[]));
        assert!(logits[id(w) as usize].is_finite(), "{w}");
        assert!(m.advance(id(w)), "{w}");
    }
    assert!(m.is_complete());
    // Inside the string the state repeats: one mask for the letters and the closing `",`, so
    // five in all (start, after `[`, in the string, after `,`, in the number).
    assert_eq!(m.masks_computed(), 5);
    // Complete, nothing can follow: with no end token nothing is left.
    let mut logits = vec![0.0; table.len()];
    assert!(!m.apply(&mut logits, &[]));
    assert!(!m.advance(id("]")), "refused");
    // Split UTF-8: the first byte alone is allowed inside a string, not outside.
    let mut m = c.matcher();
    let lead = table.len() as u32 - 2;
    assert!(!m.allows(lead));
    assert!(m.advance(id("\"")) && m.allows(lead) && m.advance(lead));
    assert!(!m.allows(id("a")) && m.allows(lead + 1));
}

fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// Whatever serde_json writes, compact or pretty, is accepted whole, and no proper prefix
    /// is complete unless it is a number (whose digits may go on).
    #[test]
    fn serde_json_output_is_accepted(v in arb_json()) {
        let g = JsonGrammar::any();
        for text in [serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap()] {
            proptest::prop_assert!(complete(&g, &text), "{}", text);
            let cut = text.len() / 2;
            if cut > 0 && !v.is_number() {
                proptest::prop_assert!(!complete(&g, &String::from_utf8_lossy(&text.as_bytes()[..cut])));
            }
        }
    }
}
