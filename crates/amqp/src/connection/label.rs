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

/// The frame a connection is handling, should it panic.
#[derive(Clone, Copy)]
pub(super) struct Current {
    pub(super) kind: FrameKind,
    pub(super) channel: u16,
    /// Its whole length while it is at the front of the read buffer; 0 if
    /// it was taken off first (a big body).
    pub(super) in_buffer: usize,
}

impl Default for Current {
    fn default() -> Self {
        Current { kind: FrameKind::Heartbeat, channel: 0, in_buffer: 0 }
    }
}

impl Current {
    /// Its label, reading a method's ids from `rbuf` (a frame's payload
    /// follows its 7-byte header).
    pub(super) fn label(&self, rbuf: &[u8]) -> FrameLabel {
        let payload = rbuf.get(7..self.in_buffer.saturating_sub(1)).unwrap_or_default();
        frame_label(&Frame { kind: self.kind, channel: self.channel, payload: Payload::Borrowed(payload) })
    }
}
