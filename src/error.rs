//! AMQP errors as the wire sees them: a reply code, RabbitMQ's reply text, the
//! failing method's ids, and whether the channel or the whole connection closes.

use std::fmt;

/// Reply codes from the AMQP 0-9-1 spec (`constants` in the shared spec JSON).
pub mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    /// RabbitMQ's reply-text prefix for a code.
    pub fn name(code: u16) -> &'static str {
        match code {
            CONNECTION_FORCED => "CONNECTION_FORCED",
            NO_ROUTE => "NO_ROUTE",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            RESOURCE_ERROR => "RESOURCE_ERROR",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            _ => "ERROR",
        }
    }

    /// Hard errors close the connection; the rest close the channel.
    pub fn is_hard(code: u16) -> bool {
        matches!(code, 320 | 501..=506 | 530 | 540 | 541 | 402)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Channel,
    Connection,
}

/// An error that ends in a `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    /// The explanation, without the `NAME - ` prefix.
    pub explanation: String,
    pub class_id: u16,
    pub method_id: u16,
    pub scope: Scope,
}

impl AmqpError {
    /// An error whose scope follows from its code (RabbitMQ's soft/hard split).
    pub fn new(code: u16, explanation: impl Into<String>) -> Self {
        let scope = if code::is_hard(code) { Scope::Connection } else { Scope::Channel };
        AmqpError { code, explanation: explanation.into(), class_id: 0, method_id: 0, scope }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, what)
    }
    pub fn precondition(what: impl Into<String>) -> Self {
        Self::new(code::PRECONDITION_FAILED, what)
    }
    pub fn access_refused(what: impl Into<String>) -> Self {
        Self::new(code::ACCESS_REFUSED, what)
    }
    pub fn locked(what: impl Into<String>) -> Self {
        Self::new(code::RESOURCE_LOCKED, what)
    }
    pub fn not_allowed(what: impl Into<String>) -> Self {
        Self::new(code::NOT_ALLOWED, what)
    }
    pub fn frame_error(what: impl Into<String>) -> Self {
        Self::new(code::FRAME_ERROR, what)
    }
    pub fn unexpected_frame(what: impl Into<String>) -> Self {
        Self::new(code::UNEXPECTED_FRAME, what)
    }
    pub fn not_implemented(what: impl Into<String>) -> Self {
        Self::new(code::NOT_IMPLEMENTED, what)
    }
    pub fn command_invalid(what: impl Into<String>) -> Self {
        Self::new(code::COMMAND_INVALID, what)
    }
    pub fn channel_error(what: impl Into<String>) -> Self {
        Self::new(code::CHANNEL_ERROR, what)
    }

    /// Records the method that failed (reported in the close frame).
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// `NAME - explanation`, cut to 255 bytes with `...` as RabbitMQ does.
    pub fn reply_text(&self) -> String {
        let mut text = format!("{} - {}", code::name(self.code), self.explanation);
        if text.len() > 255 {
            let mut cut = 252;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (class {} method {})", self.code, self.reply_text(), self.class_id, self.method_id)
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;

/// `queue 'q' in vhost '/'` — RabbitMQ's resource rendering (`rabbit_misc:rs/1`).
pub fn rs(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}

/// A binary as Erlang's `~w` prints it: `<<0,60,0,40>>`. RabbitMQ's
/// "cannot decode" texts use this form (`rabbit_misc:frame_error/2`). At most
/// `LIMIT` octets are written: more cannot fit a 255-byte reply text anyway.
pub fn erl_binary_w(bytes: &[u8]) -> String {
    const LIMIT: usize = 128;
    let mut out = String::from("<<");
    for (i, b) in bytes.iter().take(LIMIT).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&b.to_string());
    }
    out.push_str(">>");
    out
}

/// A binary as Erlang's `~tp` prints it: `<<"xx">>` when every character is
/// printable (`io_lib:printable_list/1`, Latin-1 range), `<<"é"/utf8>>` for
/// such text in UTF-8 beyond ASCII, else the `~w` form. RabbitMQ's frame-error texts print the
/// first 16 octets of the frame's payload this way
/// (`rabbit_reader:frame_error/5`).
pub fn erl_binary_p(bytes: &[u8]) -> String {
    fn escaped(c: char) -> Option<&'static str> {
        Some(match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{b}' => "\\v",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\u{1b}' => "\\e",
            _ => return None,
        })
    }
    fn printable(c: char) -> bool {
        // Erlang's default printable range is Latin-1 (`io:printable_range/0`).
        escaped(c).is_some() || (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c)
    }
    let text: Option<(String, bool)> = match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(printable) => Some((s.to_string(), s.chars().any(|c| c > '~'))),
        // Not UTF-8: Erlang falls back to reading the octets as Latin-1.
        Err(_) if bytes.iter().all(|&b| printable(b as char)) => Some((bytes.iter().map(|&b| b as char).collect(), false)),
        _ => None,
    };
    match text {
        Some((s, _)) if s.is_empty() => "<<>>".to_string(),
        Some((s, utf8)) => {
            let mut out = String::from("<<\"");
            for c in s.chars() {
                match escaped(c) {
                    Some(e) => out.push_str(e),
                    None => out.push(c),
                }
            }
            out.push('"');
            if utf8 {
                out.push_str("/utf8");
            }
            out.push_str(">>");
            out
        }
        None => erl_binary_w(bytes),
    }
}

/// A `{tag,value}` term as Erlang's `~p` prints it when it starts at
/// column `col` (0-based) of a format: on one line if it ends before column
/// 79 (`io_lib_pretty`: length < 80 - 1-based column), else broken after
/// the tag with the value aligned under it. RabbitMQ's `invalid expiration`
/// text is such a format, so long values wrap there.
pub fn erl_pretty_pair(col: usize, term: &str) -> String {
    match term.split_once(',') {
        Some((tag, value)) if term.starts_with('{') && col + term.chars().count() >= 79 => {
            format!("{tag},\n{}{value}", " ".repeat(col + 1))
        }
        _ => term.to_string(),
    }
}

/// `type T, all octets = <<...>>` (or `first 16 octets`): how RabbitMQ names
/// a frame in its frame errors (`rabbit_reader:payload_snippet/1`).
pub fn frame_octets(kind: u8, payload: &[u8]) -> String {
    if payload.len() <= 16 {
        format!("type {kind}, all octets = {}", erl_binary_p(payload))
    } else {
        format!("type {kind}, first 16 octets = {}", erl_binary_p(&payload[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_is_prefixed_and_truncated() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'");
        assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!(e.scope, Scope::Channel);
        let long = AmqpError::precondition("x".repeat(400));
        let t = long.reply_text();
        assert_eq!(t.len(), 255);
        assert!(t.ends_with("..."));
        assert_eq!(AmqpError::frame_error("x").scope, Scope::Connection);
    }

    #[test]
    fn binaries_print_as_erlang_does() {
        assert_eq!(erl_binary_w(&[0, 0, 255, 97]), "<<0,0,255,97>>");
        assert_eq!(erl_binary_w(b""), "<<>>");
        assert_eq!(erl_binary_p(b"xx"), "<<\"xx\">>");
        assert_eq!(erl_binary_p(b""), "<<>>");
        assert_eq!(erl_binary_p(&[0, 60, 0, 40]), "<<0,60,0,40>>");
        assert_eq!(erl_binary_p(b"a\"b\\c\n"), "<<\"a\\\"b\\\\c\\n\">>");
        assert_eq!(erl_binary_p("é".as_bytes()), "<<\"é\"/utf8>>");
        assert_eq!(erl_binary_p(&[0xe9]), "<<\"é\">>");
        assert_eq!(erl_binary_p(&[97, 127]), "<<97,127>>");
        assert_eq!(erl_binary_p("中".as_bytes()), "<<228,184,173>>");
        assert_eq!(erl_pretty_pair(42, "{value_too_large,9999999999999999999}"), format!("{{value_too_large,\n{}9999999999999999999}}", " ".repeat(43)));
        assert_eq!(erl_pretty_pair(42, "{value_too_large,9999999999999999}"), "{value_too_large,9999999999999999}");
        assert_eq!(erl_pretty_pair(70, "no_integer"), "no_integer");
        assert_eq!(frame_octets(9, b"xx"), "type 9, all octets = <<\"xx\">>");
        assert_eq!(frame_octets(3, &[1u8; 20]), format!("type 3, first 16 octets = <<{}>>", ["1"; 16].join(",")));
    }
}
