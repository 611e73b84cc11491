//! The one error type a peer ever sees.
//!
//! Every failure that reaches a client is an [`AmqpError`]: a reply code, a
//! reply text formatted the way RabbitMQ formats it (`NOT_FOUND - no queue 'q'
//! in vhost '/'`), and the class/method ids of the method that caused it.
//! Whether it closes the channel or the whole connection follows from the
//! code, as in the spec (soft vs hard errors).

use std::borrow::Cow;
use std::fmt;

use amq_protocol::types::ShortString;

/// The most octets a short string (every reply text, name and key) holds.
pub const SHORT_MAX: usize = 255;

/// The longest prefix of `s` of at most `max` octets that ends on a UTF-8
/// character boundary.
pub fn prefix_within(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A text cut to fit a short string as RabbitMQ cuts reply texts: longer
/// than 255 octets, it keeps the first 252 (here on a character boundary,
/// so the client can still decode it) and ends in `...`.
pub fn fit_short(s: &str) -> Cow<'_, str> {
    if s.len() <= SHORT_MAX {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("{}...", prefix_within(s, SHORT_MAX - 3)))
    }
}

/// A server-built text as a [`ShortString`], cut to fit ([`fit_short`]):
/// `ShortString::from` panics beyond 255 octets.
pub fn short_string(s: &str) -> ShortString {
    ShortString::try_new(fit_short(s).into_owned()).unwrap_or_default()
}

/// Reply codes from the AMQP 0-9-1 spec, named as RabbitMQ names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ErrorKind {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The upper-case name RabbitMQ puts in front of every reply text.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ContentTooLarge => "CONTENT_TOO_LARGE",
            ErrorKind::NoRoute => "NO_ROUTE",
            ErrorKind::NoConsumers => "NO_CONSUMERS",
            ErrorKind::ConnectionForced => "CONNECTION_FORCED",
            ErrorKind::InvalidPath => "INVALID_PATH",
            ErrorKind::AccessRefused => "ACCESS_REFUSED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::ResourceLocked => "RESOURCE_LOCKED",
            ErrorKind::PreconditionFailed => "PRECONDITION_FAILED",
            ErrorKind::FrameError => "FRAME_ERROR",
            ErrorKind::SyntaxError => "SYNTAX_ERROR",
            ErrorKind::CommandInvalid => "COMMAND_INVALID",
            ErrorKind::ChannelError => "CHANNEL_ERROR",
            ErrorKind::UnexpectedFrame => "UNEXPECTED_FRAME",
            ErrorKind::ResourceError => "RESOURCE_ERROR",
            ErrorKind::NotAllowed => "NOT_ALLOWED",
            ErrorKind::NotImplemented => "NOT_IMPLEMENTED",
            ErrorKind::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft errors close only the channel.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectionForced
                | ErrorKind::InvalidPath
                | ErrorKind::FrameError
                | ErrorKind::SyntaxError
                | ErrorKind::CommandInvalid
                | ErrorKind::ChannelError
                | ErrorKind::UnexpectedFrame
                | ErrorKind::ResourceError
                | ErrorKind::NotAllowed
                | ErrorKind::NotImplemented
                | ErrorKind::InternalError
        )
    }
}

/// A channel or connection exception, exactly as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub kind: ErrorKind,
    /// Full reply text, already prefixed with the kind's name and cut to
    /// fit a short string ([`fit_short`]).
    pub text: String,
    /// Class and method of the offending method, 0 when there is none.
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    /// Builds the error with RabbitMQ's `NAME - detail` text.
    pub fn new(kind: ErrorKind, detail: impl fmt::Display) -> Self {
        let text = format!("{} - {}", kind.name(), detail);
        let text = match fit_short(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(cut) => cut,
        };
        AmqpError { kind, text, class_id: 0, method_id: 0 }
    }

    /// Attaches the class/method ids of the method being handled, unless
    /// the error already names one.
    pub fn during(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn code(&self) -> u16 {
        self.kind.code()
    }

    pub fn is_hard(&self) -> bool {
        self.kind.is_hard()
    }

    pub fn not_found(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, detail)
    }
    pub fn precondition(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::PreconditionFailed, detail)
    }
    pub fn access_refused(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::AccessRefused, detail)
    }
    pub fn resource_locked(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::ResourceLocked, detail)
    }
    pub fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotAllowed, detail)
    }
    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotImplemented, detail)
    }
    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::CommandInvalid, detail)
    }
    pub fn channel_error(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::ChannelError, detail)
    }
    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::FrameError, detail)
    }
    pub fn syntax_error(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::SyntaxError, detail)
    }
    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::UnexpectedFrame, detail)
    }
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InternalError, detail)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.text)
    }
}

impl std::error::Error for AmqpError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_like_rabbitmq() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").during(50, 10);
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!((e.code(), e.class_id, e.method_id), (404, 50, 10));
        assert!(!e.is_hard());
        assert!(AmqpError::frame_error("x").is_hard());
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let e = AmqpError::resource_locked(format_args!("queue '{}'", "q".repeat(255)));
        assert_eq!(e.text.len(), 255);
        assert!(e.text.ends_with("qq..."));
        // 'é' is two octets: the cut may not split one.
        for n in 120..130 {
            let e = AmqpError::not_found(format_args!("no queue '{}'", "é".repeat(n)));
            assert!(e.text.len() <= 255, "{n}");
            assert!(e.text.ends_with("é...") || e.text.ends_with('\''), "{n}: {}", e.text);
        }
        assert_eq!(short_string(&"x".repeat(1000)).as_str().len(), 255);
        assert_eq!(short_string("short").as_str(), "short");
        assert_eq!(prefix_within("aé", 2), "a");
    }
}
