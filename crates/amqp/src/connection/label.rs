//! A frame's label for the log line of a panic: which method (class.method
//! ids) or kind of frame a connection was handling.

use warren_protocol::frame::{Frame, FrameKind, Payload};

/// What a connection was handling, for the log line of a panic.
#[derive(Clone, Copy)]
pub(super) struct FrameLabel {
    pub(super) channel: u16,
    /// Class and method ids of a method frame.
    pub(super) method: Option<(u16, u16)>,
    pub(super) kind: &'static str,
}

pub(super) fn frame_label(f: &Frame<Payload<'_>>) -> FrameLabel {
    let (method, kind) = match f.kind {
        FrameKind::Method => (warren_protocol::method::method_ids(&f.payload), "method"),
        FrameKind::Header => (None, "content header"),
        FrameKind::Body => (None, "content body"),
        FrameKind::Heartbeat => (None, "heartbeat"),
    };
    FrameLabel { channel: f.channel, method, kind }
}

impl std::fmt::Display for FrameLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.method {
            Some((c, m)) => write!(f, "{c}.{m}"),
            None => f.write_str(self.kind),
        }
    }
}
