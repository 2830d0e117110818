//! Chat templates (Jinja, from `tokenizer_config.json`'s `chat_template` or GGUF's
//! `tokenizer.chat_template`) rendered with minijinja the way `transformers` renders them:
//! `trim_blocks` and `lstrip_blocks` on, `raise_exception`, `strftime_now`, a `tojson` that
//! does not HTML-escape, and Python string methods (`.strip()`, `.startswith()`, …) through
//! `minijinja-contrib`'s pycompat.
//!
//! Tools are rendered as `apply_chat_template(tools=...)` does: the function schemas as the
//! template variable `tools`, assistant messages' calls as `tool_calls` and tool results as
//! messages of role `tool` ([`Message`]); [`tools`] reads calls back out of a reply.

pub mod tools;

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;

pub use tools::{ToolCall, ToolFormat};

/// A tool's schema as requests send it and templates read it (`{"type": "function",
/// "function": {"name", "description", "parameters"}}`), passed through as is.
pub type ToolSchema = serde_json::Value;

/// A chat template does not compile, or failed while rendering.
#[derive(Debug, thiserror::Error)]
#[error("chat template from {origin} failed: {detail}")]
pub struct ChatError {
    /// Where the template came from (a file and key).
    pub origin: String,
    /// What went wrong, with the template line where known (or the template's own
    /// `raise_exception` message).
    pub detail: String,
}

/// One chat message. The tool fields are left out of what the template sees when unset, as
/// a message dict without those keys would be in `transformers` (templates test `'tool_calls'
/// in message` or `message.tool_calls is defined`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// The text (a tool message's result).
    pub content: String,
    /// An assistant message's calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's answer to this call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool message's function name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A compiled-once, renderable chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `json.dumps` as `transformers`' `tojson` filter calls it: no HTML escaping, non-ASCII kept,
/// and Python's separators (`", "` and `": "` on one line; `","` and `": "` with an indent),
/// so that a tool schema or a call's arguments render to the same tokens.
fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let mut out = Vec::new();
    let written = match indent {
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonCompact);
            value.serialize(&mut ser)
        }
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            value.serialize(&mut ser)
        }
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// `json.dumps`' default one-line layout: `{"a": 1, "b": [1, 2]}`.
struct PythonCompact;

/// `", "` before every item but the first, as `json.dumps` separates items and entries.
fn python_separator<W: ?Sized + std::io::Write>(
    writer: &mut W,
    first: bool,
) -> std::io::Result<()> {
    match first {
        true => Ok(()),
        false => writer.write_all(b", "),
    }
}

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The current UTC time formatted with the common `strftime` codes (`%d %m %Y %y %b %B %H %M
/// %S %%`), for templates that print today's date (Llama 3.1).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs, &format)
}

fn format_utc(secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Howard Hinnant's days-to-civil.
    let days = (secs / 86400) as i64;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('H') => out += &format!("{h:02}"),
            Some('M') => out += &format!("{mi:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors (e.g. `"tokenizer_config.json
    /// chat_template"`); `bos_token`/`eos_token` are the texts templates print.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatError> {
        let t = ChatTemplate {
            source: source.into(),
            origin: origin.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        let env = t.environment();
        env.template_from_str(&t.source).map_err(|e| t.error(&e))?;
        Ok(t)
    }

    /// The template shipped with `tok` (from `tokenizer_config.json` or GGUF metadata), with
    /// its BOS/EOS texts; `None` if it has none. `origin` names the source in errors.
    pub fn for_tokenizer(
        tok: &crate::tokenizer::Tokenizer,
        origin: &str,
    ) -> Option<Result<ChatTemplate, ChatError>> {
        let text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        let source = tok.chat_template()?;
        Some(ChatTemplate::new(
            source,
            origin,
            text(tok.bos()),
            text(tok.eos().first().copied()),
        ))
    }

    fn environment(&self) -> Environment<'_> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env
    }

    fn error(&self, e: &Error) -> ChatError {
        let mut detail = match e.kind() {
            // The template's own message (e.g. "roles must alternate").
            ErrorKind::InvalidOperation => e.detail().unwrap_or("error").to_string(),
            _ => e.to_string(),
        };
        if let Some(line) = e.line() {
            detail = format!("{detail} (template line {line})");
        }
        ChatError {
            origin: self.origin.clone(),
            detail,
        }
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template can show the model its tools: it uses the variable `tools`.
    pub fn supports_tools(&self) -> bool {
        tools::references_tools(&self.source)
    }

    /// How the model writes tool calls, from the template's text; `None` when it names no
    /// format hoist knows.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        ToolFormat::detect(&self.source)
    }

    /// Renders `messages`; with `add_generation_prompt`, ends with the assistant's header.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders `messages` with the function schemas `tools` (the template variable `tools`;
    /// none when empty, as `transformers` passes `tools=None`).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: &[ToolSchema],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = self.environment();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| self.error(&e))?;
        let tools = match tools.is_empty() {
            true => Value::from(()),
            false => Value::from_serialize(tools),
        };
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| self.error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    const CHATML: &str = "{%- for message in messages %}\n    {%- if message.role not in ['system', 'user', 'assistant'] %}\n        {{- raise_exception('Unknown role: ' + message.role) }}\n    {%- endif %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

    fn msgs() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "  Hi there \n"),
        ]
    }

    #[test]
    fn llama3_template() {
        let t = ChatTemplate::new(LLAMA3, "test", "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let out = t.render(&msgs(), true).unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let no_prompt = t.render(&msgs(), false).unwrap();
        assert!(no_prompt.ends_with("Hi there<|eot_id|>"));
    }

    #[test]
    fn chatml_with_python_methods() {
        let t = ChatTemplate::new(CHATML, "test", "", "<|im_end|>").unwrap();
        let out = t.render(&msgs(), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn errors_are_clear() {
        let t = ChatTemplate::new(CHATML, "model.gguf tokenizer.chat_template", "", "").unwrap();
        let e = t.render(&[Message::new("tool", "x")], false).unwrap_err();
        assert_eq!(
            e.detail.split(" (").next(),
            Some("Unknown role: tool"),
            "{e}"
        );
        assert!(e.to_string().contains("model.gguf tokenizer.chat_template"));

        let e = ChatTemplate::new("{% for m in messages %}", "cfg", "", "").unwrap_err();
        assert!(e.to_string().contains("cfg"), "{e}");
    }

    #[test]
    fn tojson_and_dates() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}", "t", "", "").unwrap();
        let out = t.render(&[Message::new("user", "<b>&")], false).unwrap();
        assert_eq!(
            out, r#"{"role": "user", "content": "<b>&"}"#,
            "no HTML escaping, Python's separators"
        );
        // 2024-07-23 12:34:56 UTC
        assert_eq!(
            format_utc(1721738096, "%d %b %Y %H:%M:%S"),
            "23 Jul 2024 12:34:56"
        );
        assert_eq!(format_utc(951782400, "%Y-%m-%d %B"), "2000-02-29 February");
    }

    /// Qwen 2.5's tool handling, shortened: tools listed in the system turn, assistant calls as
    /// `<tool_call>` blocks with `arguments | tojson`, tool results in user turns.
    const HERMES: &str = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}\n    {{- '# Tools\\n<tools>' }}\n    {%- for tool in tools %}\n        {{- '\\n' }}{{- tool | tojson }}\n    {%- endfor %}\n    {{- '\\n</tools><|im_end|>\\n' }}\n{%- elif messages[0].role == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n    {%- elif message.role == 'assistant' %}\n        {{- '<|im_start|>assistant' }}\n        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' + tool_call.arguments | tojson + '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == 'tool' %}\n        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n";

    /// transformers' `tojson` keeps each object's key order (`json.dumps`, `sort_keys=False`):
    /// the schema reaches the model as the client wrote it.
    #[test]
    fn tools_render_like_transformers() {
        let t = ChatTemplate::new(HERMES, "test", "", "<|im_end|>").unwrap();
        assert!(t.supports_tools());
        assert_eq!(t.tool_format(), Some(ToolFormat::Hermes));
        let schema = serde_json::json!({"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}});
        let mut call = Message::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            id: Some("call_1".into()),
            name: "weather".into(),
            arguments: serde_json::json!({"city": "Paris"}),
        }];
        let mut result = Message::new("tool", "sunny");
        result.tool_call_id = Some("call_1".into());
        let messages = [Message::new("user", "Weather?"), call, result];
        let out = t
            .render_with_tools(&messages, std::slice::from_ref(&schema), true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\n# Tools\n<tools>\n\
             {\"type\": \"function\", \"function\": {\"name\": \"weather\", \"parameters\": {\"type\": \"object\"}}}\
             \n</tools><|im_end|>\n\
             <|im_start|>user\nWeather?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without tools the template takes its other branch (`tools` is none).
        let plain = t.render(&messages[..1], true).unwrap();
        assert_eq!(
            plain,
            "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
        );
        let chatml = ChatTemplate::new(CHATML, "test", "", "").unwrap();
        assert!(!chatml.supports_tools());
        assert_eq!(chatml.tool_format(), None);
    }
}
