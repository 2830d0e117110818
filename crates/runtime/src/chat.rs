//! Chat templates (Jinja, from `tokenizer_config.json`'s `chat_template` or GGUF's
//! `tokenizer.chat_template`) rendered with minijinja the way `transformers` renders them:
//! `trim_blocks` and `lstrip_blocks` on, `raise_exception`, `strftime_now`, a `tojson` that
//! does not HTML-escape, and Python string methods (`.strip()`, `.startswith()`, …) through
//! `minijinja-contrib`'s pycompat.

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;

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

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
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

/// `json.dumps` as `transformers`' `tojson` filter does it (no HTML escaping).
fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let text = match indent {
        None => serde_json::to_string(&value),
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            value
                .serialize(&mut ser)
                .map(|()| String::from_utf8_lossy(&out).into_owned())
        }
    }
    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(text))
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

    /// Renders `messages`; with `add_generation_prompt`, ends with the assistant's header.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = self.environment();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| self.error(&e))?;
        tmpl.render(context! {
            messages => messages,
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
            out, r#"{"role":"user","content":"<b>&"}"#,
            "no HTML escaping"
        );
        // 2024-07-23 12:34:56 UTC
        assert_eq!(
            format_utc(1721738096, "%d %b %Y %H:%M:%S"),
            "23 Jul 2024 12:34:56"
        );
        assert_eq!(format_utc(951782400, "%Y-%m-%d %B"), "2000-02-29 February");
    }
}
