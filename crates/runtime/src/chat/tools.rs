//! Tool calls in a model's reply: which format a chat template asks for, and a parser that
//! splits the reply (whole or as it streams) into text and calls.
//!
//! The format comes from the template's text, never from guessing on the output:
//!
//! - [`ToolFormat::Hermes`] (Qwen 2/2.5/3, Hermes, many fine-tunes; the template contains
//!   `<tool_call>`): each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
//!   any number of them, anywhere in the reply.
//! - [`ToolFormat::Mistral`] (the template contains `[TOOL_CALLS]`):
//!   `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`. `[TOOL_CALLS]` is a special token
//!   that decoding leaves out, so a reply that *starts* with `[` is read as the list too.
//! - [`ToolFormat::Llama3Json`] (Llama 3.1/3.2/3.3; the template contains `<|python_tag|>` or
//!   asks for `{"name": function name, "parameters": ...}`): the whole reply is one JSON object
//!   `{"name": ..., "parameters": {...}}` (or `"arguments"`), or a list of them, optionally
//!   after `<|python_tag|>`.
//!
//! Text outside the calls stays content. A call whose JSON does not parse, or lacks a string
//! `name` or an object of arguments, stays content as written. While streaming,
//! [`ToolCallStream`] holds back text that may be the start of a call (a tail that is a prefix
//! of the opening marker, or a reply that opens with `{`/`[` in the whole-reply formats), the
//! way [`crate::sampler::StopStrings`] holds back possible stop strings.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::sampler::held_prefix;

/// One call of a function by the model (or, in a request's history, by the assistant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, where the request or the model gave one.
    pub id: Option<String>,
    /// The function's name.
    pub name: String,
    /// Its arguments: a JSON object (templates expect a dict, as `transformers` documents).
    pub arguments: Value,
}

/// As chat templates expect an assistant message's `tool_calls` entries (`transformers`'
/// convention): `{"id"?, "type": "function", "function": {"name", "arguments"}}`.
impl Serialize for ToolCall {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            arguments: &'a Value,
        }
        let mut map = s.serialize_map(None)?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("type", "function")?;
        map.serialize_entry(
            "function",
            &Function {
                name: &self.name,
                arguments: &self.arguments,
            },
        )?;
        map.end()
    }
}

/// How a model writes tool calls (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{...}</tool_call>`, any number.
    Hermes,
    /// `[TOOL_CALLS] [{...}, ...]`.
    Mistral,
    /// The whole reply is `{"name": ..., "parameters": {...}}` (or a list).
    Llama3Json,
}

impl ToolFormat {
    /// The format a chat template's source asks for; `None` when it names none hoist knows.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if template.contains("[TOOL_CALLS]") {
            Some(ToolFormat::Mistral)
        } else if template.contains("<|python_tag|>")
            || template.contains("{\"name\": function name, \"parameters\"")
        {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The text that opens a call anywhere in the reply.
    fn marker(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "<tool_call>",
            ToolFormat::Mistral => "[TOOL_CALLS]",
            ToolFormat::Llama3Json => "<|python_tag|>",
        }
    }

    /// The text a reply forced to be one call is written between, `(before, after)`, for a
    /// format whose calls sit between tags (Hermes); `None` where the whole reply is the call's
    /// JSON. The `before` part is given to the model with the prompt; the JSON between is
    /// generated under a grammar.
    pub fn forced_wrapper(self) -> Option<(&'static str, &'static str)> {
        match self {
            ToolFormat::Hermes => Some(("<tool_call>\n", "\n</tool_call>")),
            ToolFormat::Mistral | ToolFormat::Llama3Json => None,
        }
    }

    /// The text that closes a call; `None`: the call runs to the end of the reply.
    fn end_marker(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("</tool_call>"),
            ToolFormat::Mistral | ToolFormat::Llama3Json => None,
        }
    }

    /// A character that, opening the reply, starts a call without the marker (the marker is a
    /// special token that decoding leaves out, or the format has none).
    fn bare_start(self) -> Option<char> {
        match self {
            ToolFormat::Hermes => None,
            ToolFormat::Mistral => Some('['),
            ToolFormat::Llama3Json => Some('{'),
        }
    }

    /// The calls in `body` (the text after the marker, up to the end marker or the reply's
    /// end); `None` if it is not a well-formed call or list of calls.
    fn parse_body(self, body: &str) -> Option<Vec<ToolCall>> {
        // A reply read as a bare call may still start with the marker (when it is not a
        // special token, or came through as text).
        let body = body.trim();
        let body = body.strip_prefix(self.marker()).unwrap_or(body);
        let value: Value = serde_json::from_str(body).ok()?;
        let (params_key, allow_list) = match self {
            ToolFormat::Hermes => ("arguments", false),
            ToolFormat::Mistral => ("arguments", true),
            ToolFormat::Llama3Json => ("parameters", true),
        };
        let items = match value {
            Value::Array(items) if allow_list && !items.is_empty() => items,
            Value::Object(_) => vec![value],
            _ => return None,
        };
        items
            .into_iter()
            .map(|item| call_from_json(item, params_key))
            .collect()
    }
}

/// A call from `{"name": ..., <params_key> or "arguments": ...}`; arguments given as a string
/// holding JSON (as OpenAI writes them) are read as that JSON.
fn call_from_json(item: Value, params_key: &str) -> Option<ToolCall> {
    let Value::Object(mut obj) = item else {
        return None;
    };
    let name = match obj.remove("name")? {
        Value::String(s) if !s.is_empty() => s,
        _ => return None,
    };
    let args = obj
        .remove(params_key)
        .or_else(|| obj.remove("arguments"))
        .unwrap_or_else(|| Value::Object(Map::new()));
    let arguments = match args {
        Value::Object(_) => args,
        Value::String(s) => match serde_json::from_str::<Value>(&s).ok()? {
            v @ Value::Object(_) => v,
            _ => return None,
        },
        _ => return None,
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Some(ToolCall {
        id,
        name,
        arguments,
    })
}

/// A piece of a reply: text to show, or a parsed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Content.
    Text(String),
    /// A tool call.
    Call(ToolCall),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Showing text; watching for the marker.
    Text,
    /// Inside a call opened by the marker (`bare`: by the reply's first character).
    Call { bare: bool },
}

/// Splits a streamed reply into text and calls: [`push`](Self::push) each new piece of text,
/// then [`finish`](Self::finish) at the end.
#[derive(Clone, Debug)]
pub struct ToolCallStream {
    format: ToolFormat,
    state: State,
    /// Text not handed out yet: held text, or the call being read (after its marker).
    buf: String,
    /// Whitespace held until text follows it (dropped before a call and at the end after one,
    /// so that the newlines between calls do not become content).
    pending_space: String,
    /// Whether anything but whitespace came yet (a bare call can only open the reply).
    started: bool,
    /// Bytes of a call's text already searched for the end marker (a long call is not searched
    /// again from its start at every token).
    searched: usize,
    calls: usize,
}

impl ToolCallStream {
    /// A parser for replies in `format`.
    pub fn new(format: ToolFormat) -> ToolCallStream {
        ToolCallStream {
            format,
            state: State::Text,
            buf: String::new(),
            pending_space: String::new(),
            started: false,
            searched: 0,
            calls: 0,
        }
    }

    /// Calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Adds newly decoded text; returns what can be handed out now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Text => {
                    if !self.started {
                        let trimmed = self.buf.trim_start();
                        if trimmed.is_empty() {
                            break;
                        }
                        if self
                            .format
                            .bare_start()
                            .is_some_and(|c| trimmed.starts_with(c))
                        {
                            // Keep the leading whitespace out of the call's raw text.
                            let lead = self.buf.len() - trimmed.len();
                            self.pending_space.push_str(&self.buf[..lead]);
                            self.buf.drain(..lead);
                            self.started = true;
                            self.state = State::Call { bare: true };
                            continue;
                        }
                    }
                    let marker = self.format.marker();
                    if let Some(at) = self.buf.find(marker) {
                        let before: String = self.buf[..at].to_string();
                        self.buf.drain(..at + marker.len());
                        self.text(before, &mut out);
                        self.started = true;
                        self.searched = 0;
                        self.state = State::Call { bare: false };
                        continue;
                    }
                    let hold = held_prefix(&self.buf, marker);
                    let shown: String = self.buf[..self.buf.len() - hold].to_string();
                    self.buf.drain(..self.buf.len() - hold);
                    self.text(shown, &mut out);
                    break;
                }
                State::Call { bare } => {
                    let Some(end) = self.format.end_marker() else {
                        break;
                    };
                    // The end marker may have begun in the bytes already searched.
                    let mut from = self.searched.saturating_sub(end.len() - 1);
                    while !self.buf.is_char_boundary(from) {
                        from -= 1;
                    }
                    let Some(at) = self.buf[from..].find(end).map(|i| from + i) else {
                        self.searched = self.buf.len();
                        break;
                    };
                    self.searched = 0;
                    let body: String = self.buf[..at].to_string();
                    self.buf.drain(..at + end.len());
                    self.state = State::Text;
                    match self.format.parse_body(&body) {
                        Some(calls) => self.emit_calls(calls, &mut out),
                        None => {
                            let raw = self.raw(&body, bare) + end;
                            self.text(raw, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    /// Ends the reply: hands out the held text, and a call left open (parsed if it is whole,
    /// else as text).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Text => self.text(rest, &mut out),
            State::Call { bare } => {
                self.state = State::Text;
                match self.format.parse_body(&rest) {
                    Some(calls) => self.emit_calls(calls, &mut out),
                    None => {
                        let raw = self.raw(&rest, bare);
                        self.text(raw, &mut out);
                    }
                }
            }
        }
        if self.calls == 0 && !self.pending_space.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut self.pending_space)));
        }
        self.pending_space.clear();
        out
    }

    /// A call's text as the model wrote it (for a call that does not parse).
    fn raw(&self, body: &str, bare: bool) -> String {
        match bare {
            true => body.to_string(),
            false => format!("{}{body}", self.format.marker()),
        }
    }

    fn text(&mut self, text: String, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        if text.trim().is_empty() {
            self.pending_space.push_str(&text);
            return;
        }
        self.started = true;
        let mut shown = std::mem::take(&mut self.pending_space);
        shown.push_str(&text);
        // Whitespace at the end may be all there is between this text and a call.
        let kept = shown.trim_end().len();
        self.pending_space = shown[kept..].to_string();
        shown.truncate(kept);
        out.push(Piece::Text(shown));
    }

    fn emit_calls(&mut self, calls: Vec<ToolCall>, out: &mut Vec<Piece>) {
        self.pending_space.clear();
        self.calls += calls.len();
        out.extend(calls.into_iter().map(Piece::Call));
    }
}

/// Splits a whole reply into its content (the text outside the calls, trimmed) and its calls.
pub fn parse(format: ToolFormat, reply: &str) -> (String, Vec<ToolCall>) {
    let mut stream = ToolCallStream::new(format);
    let mut pieces = stream.push(reply);
    pieces.extend(stream.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => content.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    let content = match calls.is_empty() {
        true => content,
        false => content.trim().to_string(),
    };
    (content, calls)
}

/// Whether a template's source uses the variable `tools` (as a whole identifier): a template
/// that never does cannot show the model its tools.
pub fn references_tools(template: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    template.match_indices("tools").any(|(at, m)| {
        let before = template[..at].chars().next_back();
        let after = template[at + m.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall {
            id: None,
            name: name.into(),
            arguments: args,
        }
    }

    /// Feeds `reply` in pieces of `step` bytes (on char boundaries) and collects the result.
    fn streamed(format: ToolFormat, reply: &str, step: usize) -> Vec<Piece> {
        let mut s = ToolCallStream::new(format);
        let mut out = Vec::new();
        let mut at = 0;
        while at < reply.len() {
            let mut end = (at + step).min(reply.len());
            while !reply.is_char_boundary(end) {
                end += 1;
            }
            out.extend(s.push(&reply[at..end]));
            at = end;
        }
        out.extend(s.finish());
        // Adjacent texts joined, so that the pieces compare whatever the step.
        let mut joined: Vec<Piece> = Vec::new();
        for p in out {
            match (joined.last_mut(), p) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    fn every_step(format: ToolFormat, reply: &str, want: &[Piece]) {
        for step in [1, 2, 3, 5, 7, 1000] {
            assert_eq!(
                streamed(format, reply, step),
                want,
                "step {step}: {reply:?}"
            );
        }
    }

    #[test]
    fn detects_formats_from_templates() {
        assert_eq!(
            ToolFormat::detect("{{- '<tool_call>\\n' }}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::detect("{{ '[TOOL_CALLS]' }}"),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(
            ToolFormat::detect("{{- '<|python_tag|>' }}"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(ToolFormat::detect("{{ messages }}"), None);
        assert!(references_tools("{% if tools %}"));
        assert!(references_tools("{{ tools|tojson }}"));
        assert!(!references_tools("{{ my_tools }} {{ toolset }}"));
    }

    #[test]
    fn hermes_several_calls_and_text_around() {
        let reply = "Let me look.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let want = [
            Piece::Text("Let me look.".into()),
            Piece::Call(call("weather", json!({"city": "Paris"}))),
            Piece::Call(call("time", json!({}))),
        ];
        every_step(ToolFormat::Hermes, reply, &want);
        let (content, calls) = parse(ToolFormat::Hermes, reply);
        assert_eq!(content, "Let me look.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].name, "time");
    }

    #[test]
    fn arguments_keep_the_models_key_order() {
        // Clients read `arguments` as the model wrote it (OpenAI's is a string): keys are not
        // re-sorted (serde_json's `preserve_order`, on for the whole workspace).
        let reply = r#"<tool_call>{"name": "f", "arguments": {"zone": 1, "area": {"y": 2, "x": 3}}}</tool_call>"#;
        let (_, calls) = parse(ToolFormat::Hermes, reply);
        assert_eq!(
            calls[0].arguments.to_string(),
            r#"{"zone":1,"area":{"y":2,"x":3}}"#
        );
    }

    #[test]
    fn hermes_malformed_stays_content() {
        let reply = "a <tool_call>{\"name\": \"x\", \"arguments\": {</tool_call> b";
        let (content, calls) = parse(ToolFormat::Hermes, reply);
        assert!(calls.is_empty());
        assert_eq!(content, reply);
        every_step(ToolFormat::Hermes, reply, &[Piece::Text(reply.into())]);
        // No name, arguments not an object: not calls either.
        for body in [r#"{"arguments": {}}"#, r#"{"name": "x", "arguments": 3}"#] {
            let reply = format!("<tool_call>{body}</tool_call>");
            assert_eq!(parse(ToolFormat::Hermes, &reply), (reply.clone(), vec![]));
        }
        // An unclosed call whose JSON is whole still counts; one that is cut off does not.
        let (_, calls) = parse(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}",
        );
        assert_eq!(calls, vec![call("f", json!({"a": 1}))]);
        let cut = "<tool_call>{\"name\": \"f\", \"argu";
        assert_eq!(parse(ToolFormat::Hermes, cut), (cut.to_string(), vec![]));
    }

    #[test]
    fn plain_text_is_untouched() {
        for format in [
            ToolFormat::Hermes,
            ToolFormat::Mistral,
            ToolFormat::Llama3Json,
        ] {
            let reply = "  Hello <tool there>, [not] {a call}\n\n";
            assert_eq!(parse(format, reply), (reply.to_string(), vec![]));
            every_step(format, reply, &[Piece::Text(reply.into())]);
        }
        // A held prefix of the marker comes out at the end.
        assert_eq!(
            parse(ToolFormat::Hermes, "x <tool_ca"),
            ("x <tool_ca".into(), vec![])
        );
    }

    #[test]
    fn streaming_holds_back_a_possible_marker() {
        let mut s = ToolCallStream::new(ToolFormat::Hermes);
        assert_eq!(s.push("Sure <tool"), vec![Piece::Text("Sure".into())]);
        assert_eq!(s.push("_call>{\"name\": \"f\""), vec![]);
        assert_eq!(
            s.push(", \"arguments\": {}}</tool_call>"),
            vec![Piece::Call(call("f", json!({})))]
        );
        assert_eq!(s.calls(), 1);
        assert_eq!(s.finish(), vec![]);
    }

    #[test]
    fn mistral_list_with_or_without_marker() {
        let want = vec![
            call("a", json!({"x": 1})),
            ToolCall {
                id: Some("abc123xyz".into()),
                name: "b".into(),
                arguments: json!({}),
            },
        ];
        let list = r#"[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}, "id": "abc123xyz"}]"#;
        for reply in [format!("[TOOL_CALLS] {list}"), format!(" {list}")] {
            assert_eq!(
                parse(ToolFormat::Mistral, &reply),
                (String::new(), want.clone())
            );
            let pieces: Vec<Piece> = want.iter().cloned().map(Piece::Call).collect();
            every_step(ToolFormat::Mistral, &reply, &pieces);
        }
        let bad = "[1, 2]";
        assert_eq!(parse(ToolFormat::Mistral, bad), (bad.into(), vec![]));
        let text_then = "Calling: [TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]";
        assert_eq!(
            parse(ToolFormat::Mistral, text_then),
            ("Calling:".into(), vec![call("a", json!({}))])
        );
    }

    #[test]
    fn llama3_whole_reply() {
        let reply = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        assert_eq!(
            parse(ToolFormat::Llama3Json, reply),
            (
                String::new(),
                vec![call("get_weather", json!({"city": "Oslo"}))]
            )
        );
        let tagged = format!("<|python_tag|>{reply}");
        assert_eq!(parse(ToolFormat::Llama3Json, &tagged).1.len(), 1);
        // JSON that is not a call, and a call with text after it, stay content.
        for text in [
            "{\"answer\": 42}",
            "{\"name\": \"f\", \"parameters\": {}} and more",
        ] {
            assert_eq!(parse(ToolFormat::Llama3Json, text), (text.into(), vec![]));
            every_step(ToolFormat::Llama3Json, text, &[Piece::Text(text.into())]);
        }
    }

    #[test]
    fn serializes_as_templates_expect() {
        let c = ToolCall {
            id: Some("call_1".into()),
            name: "f".into(),
            arguments: json!({"a": 1}),
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}})
        );
    }
}
