//! One client connection: the handshake, the frame loop, heartbeats, and the
//! hand-off of deliveries from queues into the outbound byte stream.
//!
//! The connection task owns all channel state. Queues reach it through an
//! unbounded event channel ([`Event`]); bounded in practice by prefetch
//! credit (and by `NO_ACK_WINDOW` for no-ack consumers). Bytes go out
//! through a separate writer task so that a client that stops reading never
//! stops us from reading its frames (RabbitMQ has a writer process for the
//! same reason). Everything produced while handling one read or one batch of
//! events is flushed as one chunk.

mod channel0;
mod events;
mod io;
mod label;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{channel as chan, connection as conn, AMQPClass};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};
use warren_core::{Outbox, Queue, VHost};
use warren_protocol::content::COPY_BELOW;
use warren_protocol::frame::{self, Frame, FrameKind, Payload};
use warren_protocol::method::decode_method;
use warren_protocol::{AMQPValue, AmqpError, ErrorKind, FieldTable, LongString, PROTOCOL_HEADER};

use crate::channel::{Channel, Ctx, Slots, Synced, Turn};
use events::{ConnOutbox, Event};
use io::{big_frame_missing, hold_deliveries, write_loop, Writer, MAX_IOV};
use label::{Current, FrameLabel};
use warren_node::Node;
use warren_node::{ChannelInfo, ConnInfo};

/// A channel frame, decoded.
enum Input<'a> {
    Publish(warren_protocol::method::PublishArgs<'a>),
    Method(AMQPClass),
    Header(&'a [u8]),
    Body(Payload<'a>),
}

/// Adds `n` to a counter with one writer (no locked instruction).
fn bump(a: &AtomicU64, n: usize) {
    a.store(a.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
}

/// Outbound bytes queued for the writer above which the connection stops
/// taking deliveries until the writer catches up.
const OUT_HIGH_WATER: usize = 8 << 20;
/// Outbound bytes above which the client is not read from either: replies
/// to its own requests (basic.return of big bodies, get-ok, confirms) must
/// not pile up without bound in front of a client that never reads.
const OUT_HARD_LIMIT: usize = 32 << 20;
/// Events handled per turn of the loop before the socket is read again.
const EVENT_BATCH: usize = 1024;
/// A read that yields this many frames ends the task's turn: a publisher
/// with a full socket must not starve the consumers it feeds (without this,
/// one runtime worker delivered ~3k msg/s to a consumer while taking ~700k/s).
const YIELD_AFTER_FRAMES: usize = 256;
/// How long a publisher pauses when a queue it feeds asks it to. Short: a
/// connection that also consumes (and must send acks) is never stuck.
const FLOW_PAUSE: Duration = Duration::from_millis(1);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer sizes: a connection starts with a small one and moves to
/// the big one once a read fills it (a busy publisher reads 64 KiB at a
/// time); after `SHRINK_AFTER` without traffic both buffers go back to
/// small. With 64 KiB buffers from the start, 1,000 idle connections cost
/// 18.3 KiB each (malloc touches a large buffer's first and last pages).
const READ_SMALL: usize = 512;
const READ_BIG: usize = 64 * 1024;
/// Reads once big frames come (each keeps a whole frame's room after it,
/// `frame_room`). 64 KiB split every 64 KiB message in two reads; at
/// 256 KiB a read takes about four: recvs 2 -> 0.5 a message, broker CPU
/// a 64 KiB message 44.6 -> 40.6 us, rate 1.05 x (docs/benchmarks.md,
/// "Reads of 256 KiB once big frames come").
const READ_BIG_FRAMES: usize = 256 * 1024;
const OUT_SMALL: usize = 256;
const SHRINK_AFTER: Duration = Duration::from_secs(5);
/// How long to wait for connection.close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok.
    Closing,
    /// Nothing more to read: flush and hang up.
    Done,
}

pub struct Conn {
    pub id: u64,
    shared: Arc<Node>,
    peer: SocketAddr,
    stage: Stage,
    user: String,
    /// Came in on the internal listener: one of the broker's own links.
    internal: bool,
    /// The user may set any `user_id` property (tag `impersonator`).
    impersonator: bool,
    /// Whether the client asked for connection.close on a refused login
    /// (capability `authentication_failure_close`); else the socket just closes.
    failure_close: bool,
    vhost: Option<Arc<VHost>>,
    /// Access epoch last checked for a deleted user or vhost.
    access_epoch: u64,
    /// Whether it came in over TLS.
    tls: bool,
    /// The user its verified TLS client certificate names, when EXTERNAL
    /// is among `--auth-mechanisms` (then EXTERNAL is offered to it).
    cert_login: Option<String>,
    /// This connection's line in `list_connections`, once open.
    registered: Option<Arc<ConnInfo>>,
    /// From connection.start-ok, kept for `registered`.
    client_properties: Box<str>,
    mechanism: &'static str,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    /// Boxed: a `Channel` is ~500 bytes and the map keeps spare slots
    /// (saved ~1.5 KiB per idle connection). Looked up for every frame and
    /// every delivery: hashed with Fx, not SipHash (SipHash on these u16
    /// keys was ~7 % of the transient path's instructions under callgrind;
    /// the keys are bounded by channel_max, so no flooding concern).
    channels: rustc_hash::FxHashMap<u16, Box<Channel>>,
    /// Bytes produced since the last flush.
    out: frame::Out,
    outbox: Arc<dyn Outbox>,
    /// Its consumers, by the slot deliveries name.
    slots: Slots,
    /// Whether the client wants server-sent basic.cancel.
    cancel_notify: bool,
    /// Whether the client understands connection.blocked.
    blocked_notify: bool,
    /// Whether it has published: only publishers are blocked by an alarm.
    published: bool,
    /// Whether it is blocked by the disk alarm (and was told, if it can hear it).
    blocked_sent: bool,
    /// A queue this connection published to asked for a pause (its
    /// consumers are far behind): the next read waits `FLOW_PAUSE`.
    pressure: bool,
    /// This turn sent a message that the log records deliveries of (or a
    /// `basic.get` answer): in a cluster, held until those records are on
    /// the followers, so that after a failover it comes back flagged
    /// `redelivered`.
    delivered_logged: bool,
    /// Queues that may deliver again once this turn's work is done, and
    /// the deliveries written out in it.
    turn: Turn,
    started: Instant,
    closing_since: Option<Instant>,
}

/// A client's byte stream: plain TCP, or TLS over TCP.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A client's connection a cluster follower passed on to this leader.
    PassedOn(warren_node::cluster::BoxStream),
}

pub async fn serve(stream: Stream, peer: SocketAddr, shared: Arc<Node>, shutdown: watch::Receiver<bool>) {
    serve_as(stream, peer, shared, shutdown, false).await
}

/// Serves a connection to the internal listener (`warren_node::links`):
/// only the broker's own links, with the secret, may log in there.
pub async fn serve_internal(stream: TcpStream, peer: SocketAddr, shared: Arc<Node>, shutdown: watch::Receiver<bool>) {
    serve_as(Stream::Tcp(stream), peer, shared, shutdown, true).await
}

async fn serve_as(
    stream: Stream,
    peer: SocketAddr,
    shared: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
    internal: bool,
) {
    let tls = matches!(stream, Stream::Tls(_));
    info!(%peer, tls, "accepting AMQP connection");
    // Only a certificate the TLS handshake verified is there to read.
    let cert_login = match &stream {
        Stream::Tls(s) if !internal && shared.config.auth_mechanisms().any(|m| m == "EXTERNAL") => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| crate::tls::login_name(der, &shared.config.ssl_cert_login_from)),
        _ => None,
    };
    let (mut rd, writer): (Box<dyn AsyncRead + Unpin + Send>, Writer) = match stream {
        Stream::Tcp(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Writer::Tcp(Arc::new(w)))
        }
        Stream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            (Box::new(r), Writer::Other(Box::new(w)))
        }
        Stream::PassedOn(s) => {
            let (r, w) = tokio::io::split(s);
            (Box::new(r), Writer::Other(Box::new(w)))
        }
    };
    let mut rbuf = BytesMut::with_capacity(READ_SMALL);
    let header = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        while rbuf.len() < 8 {
            if rd.read_buf(&mut rbuf).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    if !matches!(header, Ok(Some(()))) {
        debug!(%peer, "closed before sending a protocol header");
        return;
    }
    if &rbuf[..8] != PROTOCOL_HEADER {
        // As the spec asks: answer with the protocol we speak, then hang up.
        match writer {
            Writer::Tcp(w) => {
                let _ = w.try_write(PROTOCOL_HEADER);
            }
            Writer::Other(mut w) => {
                let _ = w.write_all(PROTOCOL_HEADER).await;
                let _ = w.shutdown().await;
            }
        }
        info!(%peer, "refused connection: bad protocol header");
        return;
    }
    rbuf.advance(8);

    let (event_tx, mut events) = mpsc::unbounded_channel();
    let (write_tx, write_rx) = mpsc::unbounded_channel::<Bytes>();
    let pending = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    let fast = match &writer {
        Writer::Tcp(w) => Some(w.clone()),
        Writer::Other(_) => None,
    };
    let writer = tokio::spawn(write_loop(writer, write_rx, pending.clone(), drained.clone()));

    let id = shared.broker.next_connection_id();
    let mut c = Conn {
        id,
        shared: shared.clone(),
        peer,
        stage: Stage::AwaitStartOk,
        user: String::new(),
        internal,
        impersonator: false,
        failure_close: false,
        vhost: None,
        access_epoch: 0,
        tls,
        cert_login,
        registered: None,
        client_properties: Box::from(""),
        mechanism: "",
        frame_max: frame::FRAME_OVERHEAD as u32 + 4088,
        channel_max: shared.config.channel_max,
        heartbeat: 0,
        channels: Default::default(),
        out: frame::Out::with_capacity(OUT_SMALL),
        outbox: Arc::new(ConnOutbox { tx: event_tx }),
        slots: Slots::default(),
        cancel_notify: false,
        blocked_notify: false,
        published: false,
        blocked_sent: false,
        pressure: false,
        delivered_logged: false,
        turn: Turn::default(),
        started: Instant::now(),
        closing_since: None,
    };
    c.send_start();
    // What came with the protocol header is handled now: no next read may come.
    if !rbuf.is_empty() {
        c.on_bytes(&mut rbuf);
    }

    let mut synced_rx = shared.confirms.synced.clone();
    let mut alarm_rx = shared.alarms.current.clone();
    // A cluster's leader: after a turn that saved durable definitions (a
    // declaration, a binding…), nothing more goes out until every in-sync
    // follower has the save — so a declare-ok is never lost in a failover.
    let hub = shared.cluster.as_ref().and_then(|c| c.gate());
    let mut defs_rx = shared.confirms.defs_replicated.clone();
    let mut defs_wait = 0u64;
    // Likewise the output of a turn that delivered logged messages waits
    // until the log (their delivery records) is on the followers — and so
    // does all output after it, in order; what came before goes out
    // meanwhile, so deliveries stream a replication round trip behind the
    // log instead of waiting in bursts for whatever was appended last.
    let mut held: std::collections::VecDeque<(u64, Vec<Bytes>)> = Default::default();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when a turn handled many frames: after flushing, let other
    // connections (consumers of what we just published) run before reading more.
    let mut flush_pending = false;
    // Flow control: while paused (a queue asked for it), no reading.
    // One timer, re-armed: no timer is made per turn of the loop.
    let mut paused = false;
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    // Whether reads have filled the read buffer: then it is READ_BIG.
    let mut read_big = false;
    // Whether frames of BIG_FRAME bytes or more have come (see the reads).
    let mut big_frames = false;
    loop {
        // (A single node has no hub: no lock is read for these.)
        if hub.is_some() {
            // The watch's guard must be gone before the log's lock is
            // taken: the hub takes them the other way round (a deadlock
            // seen in the cluster benchmark).
            let synced = *synced_rx.borrow();
            hold_deliveries(&mut c, &mut held, synced);
        }
        let defs_held = hub.is_some() && defs_wait > *defs_rx.borrow();
        let deliveries_held = !held.is_empty();
        if !c.out.is_empty() && !defs_held {
            if let Some(info) = &c.registered {
                bump(&info.send_oct, c.out.len());
            }
            // Write straight from this task while the writer is idle (no
            // hand-off, no wake-up); give the writer only what would block.
            let mut written = 0;
            if let Some(wr) = fast.as_ref().filter(|_| pending.load(Ordering::Acquire) == 0) {
                let r = if c.out.has_segments() {
                    // Big bodies by reference: one vectored write.
                    let mut slices = [std::io::IoSlice::new(&[]); MAX_IOV];
                    let n = c.out.io_slices(&mut slices);
                    wr.try_write_vectored(&slices[..n])
                } else {
                    wr.try_write(&c.out)
                };
                match r {
                    Ok(n) => written = n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            if written == c.out.len() {
                c.out.clear();
            } else {
                c.out.advance(written);
                let mut gone = false;
                c.out.take_chunks(|chunk| {
                    pending.fetch_add(chunk.len(), Ordering::AcqRel);
                    gone |= write_tx.send(chunk).is_err();
                });
                if gone {
                    break;
                }
            }
            last_write = Instant::now();
        }
        if c.stage == Stage::Done {
            break;
        }
        if flush_pending {
            flush_pending = false;
            tokio::task::yield_now().await;
        }
        let pending_bytes = pending.load(Ordering::Acquire);
        let backpressured = pending_bytes > OUT_HIGH_WATER;
        let stalled = pending_bytes > OUT_HARD_LIMIT;
        if stalled {
            // Its unread heartbeats are not held against it meanwhile.
            last_read = Instant::now();
        }
        // Under the disk alarm a publisher is not read from (its heartbeats
        // are not held against it meanwhile).
        let alarmed = c.published && alarm_rx.borrow().is_some();
        if alarmed {
            last_read = Instant::now();
            if !c.blocked_sent {
                let reason = alarm_rx.borrow().clone();
                c.on_alarm(reason);
                continue; // flush the notification first
            }
        }
        let want = if read_big { READ_BIG } else { READ_SMALL };
        // Big frames are read into room kept for them, never moved: a body
        // frame still arriving gets exactly its missing bytes; once big
        // frames come, every read leaves room after it for a whole frame
        // to complete in place. (A body frame is a slice of this buffer
        // until the message is gone: a move is a copy of up to frame_max.)
        let missing = big_frame_missing(&rbuf);
        // Not before connection.open: a stranger's one big frame does not
        // buy it the big reads (and their buffers) a publisher of big
        // bodies gets.
        big_frames |= missing.is_some() && c.stage == Stage::Open;
        let (limit, needed) = match missing {
            Some(m) => (m, m),
            None if big_frames => (READ_BIG_FRAMES, READ_BIG_FRAMES + c.frame_room()),
            None => (want, want / 4),
        };
        if rbuf.capacity() - rbuf.len() < needed {
            rbuf.reserve(needed.max(want));
        }
        let spare = (rbuf.capacity() - rbuf.len()).min(limit);
        tokio::select! {
            changed = alarm_rx.changed() => {
                if changed.is_ok() {
                    let reason = alarm_rx.borrow().clone();
                    c.on_alarm(reason);
                }
            }
            _ = &mut pause, if paused => {
                paused = false;
                last_read = Instant::now();
            }
            read = async { rd.read_buf(&mut (&mut rbuf).limit(limit)).await }, if !alarmed && !stalled && !paused => {
                match read {
                    Ok(0) | Err(_) => {
                        if c.stage == Stage::Open {
                            info!(peer = %c.peer, "client closed the connection without connection.close");
                        }
                        break;
                    }
                    Ok(n) => {
                        if let Some(info) = &c.registered {
                            bump(&info.recv_oct, n);
                        }
                        last_read = Instant::now();
                        read_big |= n >= spare;
                        if c.on_bytes(&mut rbuf) >= YIELD_AFTER_FRAMES {
                            flush_pending = true;
                        }
                        if let Some(hub) = &hub {
                            defs_wait = hub.defs_saved();
                        }
                        if std::mem::take(&mut c.pressure) {
                            pause.as_mut().reset(tokio::time::Instant::now() + FLOW_PAUSE);
                            paused = true;
                        }
                    }
                }
            }
            ev = events.recv(), if !backpressured => {
                if let Some(ev) = ev {
                    c.on_events(ev, &mut events);
                }
            }
            _ = drained.notified(), if backpressured => {}
            _ = defs_rx.changed(), if defs_held => {}
            changed = synced_rx.changed(), if c.has_held() || deliveries_held => {
                if changed.is_ok() {
                    c.after_turn_guarded();
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(info) = &c.registered {
                    let held = rbuf.capacity() + c.out.capacity() + pending.load(Ordering::Relaxed);
                    info.buffers.store(held, Ordering::Relaxed);
                }
                c.check_still_allowed();
                c.slots.sweep();
                if let Some(vhost) = c.vhost.clone() {
                    let now_ms = warren_core::now_ms();
                    for ch in c.channels.values_mut() {
                        ch.expire_consumers(&mut c.out, (&vhost, &mut c.slots), c.cancel_notify, now_ms);
                        ch.flush_stats();
                    }
                }
                let killed = c.registered.as_ref().and_then(|i| i.kill_reason.lock().take());
                if let Some(reason) = killed.filter(|_| c.stage < Stage::Closing) {
                    info!(peer = %c.peer, %reason, "connection closed by an administrator");
                    c.close(AmqpError::new(ErrorKind::ConnectionForced, reason));
                }
                if c.stage < Stage::Open && now - c.started > HANDSHAKE_TIMEOUT {
                    info!(peer = %c.peer, "handshake timeout");
                    break;
                }
                if now - last_read > SHRINK_AFTER && now - last_write > SHRINK_AFTER {
                    // Quiet: give big buffers back (idle connections stay small).
                    if rbuf.is_empty() && rbuf.capacity() > READ_SMALL {
                        rbuf = BytesMut::with_capacity(READ_SMALL);
                        read_big = false;
                        big_frames = false;
                    }
                    if c.out.is_empty() && c.out.capacity() > 4 * OUT_SMALL {
                        c.out = frame::Out::with_capacity(OUT_SMALL);
                    }
                }
                if let Some(since) = c.closing_since {
                    if now - since > CLOSE_TIMEOUT {
                        break;
                    }
                }
                if c.heartbeat > 0 {
                    let hb = Duration::from_secs(c.heartbeat as u64);
                    if now - last_read > hb * 2 {
                        warn!(peer = %c.peer, timeout = c.heartbeat, "missed heartbeats from client, closing");
                        break;
                    }
                    if now - last_write >= hb / 2 {
                        frame::write_heartbeat(&mut c.out);
                    }
                }
            }
            _ = shutdown.changed() => {
                // What is confirmable goes out before the 320.
                c.after_turn();
                if c.stage < Stage::Closing {
                    c.close(AmqpError::new(
                        ErrorKind::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                } else {
                    break;
                }
            }
        }
    }
    c.cleanup(&mut events);
    drop(write_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

impl Conn {
    /// Room kept after a read for a big frame to complete in place: the
    /// negotiated frame_max, at most 1 MiB (bigger frames are moved).
    fn frame_room(&self) -> usize {
        match self.frame_max as usize {
            0 => 1 << 20,
            n => n.min(1 << 20),
        }
    }

    /// Sends connection.close for a hard error and waits for close-ok.
    fn close(&mut self, err: AmqpError) {
        if self.stage >= Stage::Closing {
            return;
        }
        info!(peer = %self.peer, code = err.code(), text = %err.text, "closing connection");
        let m = AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
            reply_code: err.code(),
            reply_text: warren_protocol::short_string(&err.text),
            class_id: err.class_id,
            method_id: err.method_id,
        }));
        frame::write_method(&mut self.out, 0, &m);
        self.stage = Stage::Closing;
        self.closing_since = Some(Instant::now());
        self.close_all_channels();
    }

    /// Handles every complete frame in `rbuf`; returns how many there were.
    fn on_bytes(&mut self, rbuf: &mut BytesMut) -> usize {
        let mut frames = 0;
        let mut current = Current::default();
        // One `contain` for the whole buffer, not one a frame: a frame
        // passed into a closure and on by reference was read back from
        // memory just written, in wider loads than it was written with
        // (the core stalled on each: 2.7 % of a transient run's samples).
        while let Err(panic) = crate::panics::contain(|| self.on_frames(rbuf, &mut frames, &mut current)) {
            // Step over the frame that panicked and go on: the connection
            // is closing, and the rest of the buffer is read as such.
            let what = current.label(rbuf);
            rbuf.advance(current.in_buffer);
            frames += 1;
            self.on_panic(what, &panic);
        }
        self.after_turn_guarded();
        frames
    }

    /// Handles the whole frames in `rbuf`, counting them in `frames`;
    /// `current` says which one is being handled, should it panic.
    fn on_frames(&mut self, rbuf: &mut BytesMut, frames: &mut usize, current: &mut Current) {
        loop {
            if self.stage == Stage::Done {
                return;
            }
            let frame_max = if self.stage == Stage::Open || self.stage == Stage::Closing {
                self.frame_max
            } else {
                // Before tune-ok the spec's minimum applies.
                warren_protocol::FRAME_MIN_SIZE.max(self.shared.config.frame_max)
            };
            // Handled where it lies in the read buffer, then stepped over;
            // a body big enough to be kept as it is (not copied out) is
            // taken off the buffer first.
            let (f, n) = match frame::peek_frame(rbuf, frame_max) {
                Ok(Some((f, n))) if f.kind == FrameKind::Body && f.payload.len() >= COPY_BELOW => {
                    let (channel, size) = (f.channel, f.payload.len());
                    let mut whole = rbuf.split_to(n);
                    whole.advance(7);
                    whole.truncate(size);
                    (Frame { kind: FrameKind::Body, channel, payload: Payload::Shared(whole.freeze()) }, 0)
                }
                Ok(Some((f, n))) => {
                    (Frame { kind: f.kind, channel: f.channel, payload: Payload::Borrowed(f.payload) }, n)
                }
                Ok(None) => {
                    // Room for the rest of the frame (parse_frame reserves it).
                    let _ = frame::parse_frame(rbuf, frame_max);
                    return;
                }
                Err(e) => {
                    // The stream is out of sync: say why, then stop reading.
                    self.close(e);
                    rbuf.clear();
                    return;
                }
            };
            *current = Current { kind: f.kind, channel: f.channel, in_buffer: n };
            let result = self.on_frame(f);
            rbuf.advance(n);
            // Stepped over: a panic before the next frame (in `close`)
            // must not step over that one.
            current.in_buffer = 0;
            *frames += 1;
            if let Err(e) = result {
                if self.stage == Stage::Closing {
                    self.stage = Stage::Done;
                } else {
                    self.close(e);
                }
            }
        }
    }

    fn on_panic(&mut self, what: FrameLabel, panic: &crate::panics::Panic) {
        tracing::error!(
            peer = %self.peer,
            user = %self.user,
            channel = what.channel,
            method = %what,
            "connection handler panicked at {panic}; closing the connection with 541 INTERNAL_ERROR"
        );
        let (class_id, method_id) = what.method.unwrap_or((0, 0));
        let err = AmqpError { kind: ErrorKind::InternalError, text: "INTERNAL_ERROR".into(), class_id, method_id };
        if crate::panics::contain(|| self.close(err)).is_err() {
            // Its state is past saving: hang up.
            self.stage = Stage::Done;
        }
    }

    fn after_turn_guarded(&mut self) {
        if let Err(panic) = crate::panics::contain(|| self.after_turn()) {
            self.on_panic(FrameLabel { channel: 0, method: None, kind: "deliveries and confirms" }, &panic);
        }
    }

    /// Work left over from a turn: deliver again where credit was freed and
    /// flush pending publisher confirms.
    /// Message-log position up to which messages may be confirmed: on disk
    /// here (and, in a cluster, on every in-sync follower); everything
    /// without a log.
    fn synced(&self) -> u64 {
        match self.shared.broker.log() {
            Some(_) => *self.shared.confirms.synced.borrow(),
            None => u64::MAX,
        }
    }

    fn has_held(&self) -> bool {
        self.channels.values().any(|c| c.has_held())
    }

    fn after_turn(&mut self) {
        let synced = self.synced();
        for ch in self.channels.values_mut() {
            ch.flush_confirms(&mut self.out, synced);
        }
        let mut seen: Vec<*const Queue> = Vec::new();
        self.turn.flush();
        for q in std::mem::take(&mut self.turn.to_wake) {
            let p = Arc::as_ptr(&q);
            if !seen.contains(&p) {
                seen.push(p);
                q.wake();
            }
        }
    }

    // One caller: inlined, a frame's parts stay in registers.
    #[inline(always)]
    fn on_frame(&mut self, f: Frame<Payload<'_>>) -> Result<(), AmqpError> {
        if f.kind == FrameKind::Heartbeat {
            if f.channel != 0 {
                return Err(AmqpError::unexpected_frame(format_args!(
                    "type 8, all octets = {}",
                    frame::erlang_binary(&f.payload)
                )));
            }
            return Ok(());
        }
        if self.stage == Stage::Closing {
            // Only close / close-ok matter now.
            if f.kind == FrameKind::Method && f.channel == 0 {
                match decode_method(&f.payload) {
                    Ok(AMQPClass::Connection(conn::AMQPMethod::CloseOk(_))) => self.stage = Stage::Done,
                    Ok(AMQPClass::Connection(conn::AMQPMethod::Close(_))) => {
                        frame::write_method(
                            &mut self.out,
                            0,
                            &AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                        );
                        self.stage = Stage::Done;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        if f.channel == 0 {
            if f.kind != FrameKind::Method {
                let t = if f.kind == FrameKind::Header { frame::FRAME_HEADER } else { frame::FRAME_BODY };
                return Err(AmqpError::unexpected_frame(format_args!(
                    "type {t}, all octets = {}",
                    frame::erlang_binary(&f.payload)
                )));
            }
            let m = decode_method(&f.payload)?;
            return self.on_connection_method(m);
        }
        if self.stage != Stage::Open {
            return Err(AmqpError::channel_error("channel frame before connection.open"));
        }
        if f.channel > self.channel_max {
            return Err(AmqpError::channel_error(format_args!(
                "channel {} exceeds channel_max {}",
                f.channel, self.channel_max
            )));
        }
        let vhost = self.vhost.as_ref().expect("open connection has a vhost");
        // basic.publish is parsed by hand: it comes once per message.
        let input = match f.kind {
            FrameKind::Method => match warren_protocol::method::parse_publish(&f.payload) {
                Some(publish) => Input::Publish(publish?),
                None => Input::Method(decode_method(&f.payload)?),
            },
            FrameKind::Header => Input::Header(&f.payload),
            _ => Input::Body(f.payload),
        };
        let Some(ch) = self.channels.get_mut(&f.channel) else {
            let expected = AmqpError::channel_error("expected 'channel.open'");
            return match input {
                Input::Method(AMQPClass::Channel(chan::AMQPMethod::Open(_))) => {
                    self.check_user_channel_limit()?;
                    let ch = Box::new(Channel::new(f.channel, self.internal));
                    if let Some(info) = &self.registered {
                        info.channel_list.lock().push(ch.info.clone());
                    }
                    self.shared.registry.totals.channels_opened.fetch_add(1, Ordering::Relaxed);
                    self.channels.insert(f.channel, ch);
                    self.count_channels();
                    let ok = AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {}));
                    frame::write_method(&mut self.out, f.channel, &ok);
                    Ok(())
                }
                Input::Method(AMQPClass::Channel(chan::AMQPMethod::CloseOk(_))) => Ok(()),
                Input::Method(m) => Err(expected.during(m.get_amqp_class_id(), m.get_amqp_method_id())),
                // Malformed names first: the frame error comes before
                // the channel is looked up, as in RabbitMQ.
                Input::Publish(p) => Err(p.names().err().unwrap_or(expected.during(60, 40))),
                Input::Header(_) | Input::Body(_) => Err(expected),
            };
        };
        self.published |= matches!(input, Input::Publish(_));
        self.delivered_logged |=
            matches!(input, Input::Method(AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Get(_))));
        let mut ctx = Ctx {
            broker: &self.shared.broker,
            vhost,
            user: &self.user,
            impersonator: self.impersonator,
            connection: self.id,
            out: &mut self.out,
            outbox: &self.outbox,
            slots: &mut self.slots,
            frame_max: self.frame_max,
            max_message_size: self.shared.config.max_message_size,
            to_wake: &mut self.turn.to_wake,
            synced: Synced(self.shared.broker.log().map(|_| &self.shared.confirms.synced)),
            pressure: &mut self.pressure,
        };
        let result = match input {
            Input::Publish(p) => ch.on_publish(&mut ctx, p),
            Input::Method(m) => ch.on_method(&mut ctx, m),
            Input::Header(payload) => ch.on_header(&mut ctx, payload),
            Input::Body(payload) => ch.on_body(&mut ctx, payload),
        };
        match result {
            Ok(()) => {
                if ch.is_closed() {
                    if let Some(ch) = self.channels.remove(&f.channel) {
                        ch.flush_stats();
                        self.channel_gone(&ch.info);
                    }
                    self.count_channels();
                }
                Ok(())
            }
            Err(e) if e.is_hard() => Err(e),
            Err(e) => {
                ch.fail(&mut ctx, e);
                Ok(())
            }
        }
    }

    fn count_channels(&self) {
        if let Some(info) = &self.registered {
            info.channels.store(self.channels.len(), Ordering::Relaxed);
        }
    }

    /// A channel closed: it leaves the management API's list, and its
    /// statistics go to its vhost's totals.
    fn channel_gone(&self, info: &Arc<ChannelInfo>) {
        let totals = &self.shared.registry.totals;
        totals.channels_closed.fetch_add(1, Ordering::Relaxed);
        totals.received_confirm.fetch_add(info.received_confirm.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(vhost) = &self.vhost {
            vhost.retired.add_all(&info.stats.snapshot());
        }
        if let Some(conn) = &self.registered {
            conn.channel_list.lock().retain(|c| !Arc::ptr_eq(c, info));
        }
    }

    fn close_all_channels(&mut self) {
        if let Some(vhost) = self.vhost.clone() {
            for (_, mut ch) in std::mem::take(&mut self.channels) {
                ch.release_all(&vhost, &mut self.slots);
                ch.flush_stats();
                self.channel_gone(&ch.info);
            }
        }
    }

    /// The connection is over: channels give back their messages, in-flight
    /// deliveries go back to their queues, exclusive queues are deleted.
    fn cleanup(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        self.close_all_channels();
        self.drain_events(events);
        if let Some(vhost) = &self.vhost {
            vhost.connection_closed(self.id);
        }
        let was_open = self.registered.take().is_some();
        if was_open {
            self.shared.registry.totals.connections_closed.fetch_add(1, Ordering::Relaxed);
            let mut open = self.shared.registry.connections.lock();
            open.remove(&self.id);
            if open.capacity() > 64 && open.len() * 4 < open.capacity() {
                // After a wave of connections, give the table's memory back.
                open.shrink_to_fit();
            }
            drop(open);
            if let Some(vhost) = &self.vhost {
                vhost.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
        match was_open {
            true => info!(peer = %self.peer, user = %self.user, "closing AMQP connection"),
            false => debug!(peer = %self.peer, "connection closed"),
        }
    }
}
