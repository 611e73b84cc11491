//! Replication of the leader's data directory to its followers, byte for
//! byte, over the cluster listener (`--cluster-listen`).
//!
//! The leader's message log reports every change to its files in order
//! (appends once written, segment deletions once done) and every sync; the
//! definitions files report every save. The [`Hub`] numbers these as one
//! stream of frames. A follower that connects says hello with what it holds
//! (each file's size and SHA-256); the leader takes it out of the in-sync
//! replica set (ISR) in etcd if it was there, then sends what it lacks —
//! a file of the leader's that it holds a prefix of gets only the rest,
//! any other is sent whole, and files the leader does not have are deleted
//! — followed by the stream from the moment the copy began (an append the
//! copy already holds is written again, at its offset, with the same
//! bytes). The follower writes what it gets, and at each `SYNC` mark fsyncs
//! and acknowledges the
//! leader's log position. Once it has everything the leader had synced
//! when it joined, the leader counts it for confirms and adds it to the ISR
//! in etcd — in that order; a follower that goes silent is taken out of
//! the ISR in etcd before confirms stop waiting for it. A confirm waits
//! for the position to be synced on the leader and acknowledged by every
//! follower counted ([`Hub::confirmable`]).
//!
//! Frames: kind (1 octet), payload length (4 octets, big-endian), payload.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use warren_store::log::FileOp;

use super::{Cluster, Role};

/// The parts of the data directory that are replicated (the spill store,
/// the lock and the ctl socket are each node's own).
pub const REPLICATED: [&str; 2] = ["messages", "definitions"];

/// Follower → leader: cluster name (str16), node name (str16), then what
/// it holds: for each file, path (str16), size (u64), SHA-256 (32 octets).
const HELLO: u8 = 1;
/// Follower → leader: the last `SYNC` mark applied and fsync'd: a log
/// position (u64) and a count of definitions saves (u64).
const ACK: u8 = 2;
/// Leader → follower: the leader's epoch (u64).
const WELCOME: u8 = 10;
/// Path (str16), offset (u64), the bytes written there.
const APPEND: u8 = 12;
/// Path (str16): the file was deleted.
const DELETE: u8 = 13;
/// Path (str16), the file's whole new content.
const REPLACE: u8 = 14;
/// A log position (u64) and the number of definitions saves so far (u64):
/// fsync what came before, then acknowledge them.
const SYNC: u8 = 15;
/// Nothing new: acknowledge again (the leader's liveness check).
const PING: u8 = 16;

/// Frames larger than this are refused (a message body is at most 512 MiB).
const MAX_FRAME: usize = 1 << 30;
/// Frames kept for a follower that has not read them: past this the
/// slowest follower is cut off (it reconnects and catches up).
const MAX_BACKLOG: usize = 256 << 20;
/// A follower not heard from for this long is dropped (and taken out of
/// the ISR: confirms wait for it until then).
const FOLLOWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle leader pings its followers.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A follower leaves a leader it has not heard from for this long.
const LEADER_SILENCE: Duration = Duration::from_secs(3);
/// A follower joins the ISR once it is at most this far behind.
const ISR_LAG: u64 = 8 << 20;
/// A follower has this long (on top of `FOLLOWER_TIMEOUT`) to sync and
/// acknowledge what it was sent on joining.
const CATCH_UP_GRACE: Duration = Duration::from_secs(10);
/// A follower syncs at least this often while catching up.
const FLUSH_EVERY: u64 = 64 << 20;
/// Snapshot files are sent in pieces of this size.
const COPY_CHUNK: usize = 1 << 20;

fn frame(kind: u8, build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = vec![kind, 0, 0, 0, 0];
    build(&mut b);
    let len = (b.len() - 5) as u32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn append_frame(path: &str, offset: u64, bytes: &[u8]) -> Vec<u8> {
    frame(APPEND, |b| {
        put_str(b, path);
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(bytes);
    })
}

fn pos_frame(kind: u8, pos: u64) -> Vec<u8> {
    frame(kind, |b| b.extend_from_slice(&pos.to_be_bytes()))
}

/// A `SYNC` or `ACK`: a log position and a count of definitions saves.
fn mark_frame(kind: u8, (pos, defs): (u64, u64)) -> Vec<u8> {
    frame(kind, |b| {
        b.extend_from_slice(&pos.to_be_bytes());
        b.extend_from_slice(&defs.to_be_bytes());
    })
}

/// Reads the fields of one frame's payload.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated replication frame".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 octets")))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().expect("2 octets")) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "replication frame: bad path".to_string())
    }
}

/// The next whole frame in `buf` from `at`: its kind and payload range.
fn next_frame(buf: &[u8], at: usize) -> Result<Option<(u8, std::ops::Range<usize>)>, String> {
    let Some(head) = buf.get(at..at + 5) else { return Ok(None) };
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 octets")) as usize;
    if len > MAX_FRAME {
        return Err(format!("replication frame of {len} octets"));
    }
    if buf.len() < at + 5 + len {
        return Ok(None);
    }
    Ok(Some((head[0], at + 5..at + 5 + len)))
}

/// A replicated file's path, relative to the data directory, checked: one
/// of [`REPLICATED`], then a plain file name.
fn checked(path: &str) -> Result<&str, String> {
    let ok = path.split_once('/').is_some_and(|(dir, name)| {
        REPLICATED.contains(&dir)
            && !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    match ok {
        true => Ok(path),
        false => Err(format!("replication frame names a file outside the data directory: {path:?}")),
    }
}

/// What a follower holds: path → (size, SHA-256 of the content).
type Held = HashMap<String, (u64, [u8; 32])>;

/// Writes to a follower. One that does not take the bytes within
/// `FOLLOWER_TIMEOUT` (paused, or its link stalled) ends its session, which
/// takes it out of the ISR: it must not hold confirms.
async fn send(wr: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(FOLLOWER_TIMEOUT, wr.write_all(bytes)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the follower does not read".into()),
    }
}

/// SHA-256 of the first `size` octets of `f` (None: it is shorter).
async fn prefix_digest(f: &mut tokio::fs::File, size: u64) -> io::Result<Option<[u8; 32]>> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut left = size;
    let mut buf = vec![0; COPY_CHUNK];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(h.finalize().into()))
}

// ---------------------------------------------------------------- leader

/// A follower as the leader sees it.
struct Peer {
    session: u64,
    /// The next frame to send it.
    cursor: u64,
    /// The log position it has fsync'd, and the definitions saves.
    acked: u64,
    acked_defs: u64,
    /// What the leader had synced (and saved) when it joined: it is caught
    /// up past it.
    joined_at: u64,
    joined_defs: u64,
    /// Confirms wait for it.
    counted: bool,
    /// In the ISR in etcd (or being added).
    in_isr: bool,
    adding: bool,
    heard: Instant,
}

struct HubState {
    /// Frames not yet sent to every follower; `first` numbers the oldest.
    frames: VecDeque<Arc<Vec<u8>>>,
    first: u64,
    bytes: usize,
    /// The log position synced here.
    local: u64,
    /// Definitions saves so far.
    defs: u64,
    /// Set when this node stops leading: nothing more is confirmed.
    fenced: bool,
    peers: HashMap<String, Peer>,
    sessions: u64,
}

/// The leader's side: the stream of file changes, the followers, and the
/// position up to which messages may be confirmed.
pub struct Hub {
    dir: PathBuf,
    st: Mutex<HubState>,
    more: Notify,
    confirmable: watch::Sender<u64>,
    /// Definitions saves on every counted follower (replies to durable
    /// declarations wait for it).
    defs_replicated: watch::Sender<u64>,
    /// `HubState::defs`, readable without the lock (every connection looks
    /// at it after each read).
    defs: AtomicU64,
    /// Until when (ms on the cluster's clock) the lease is surely ours.
    lease_until: Arc<AtomicU64>,
}

impl Hub {
    /// `confirmable` is what connections wait on before confirming.
    pub fn new(
        dir: PathBuf,
        confirmable: watch::Sender<u64>,
        defs_replicated: watch::Sender<u64>,
        cluster: &Arc<Cluster>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            dir,
            st: Mutex::new(HubState {
                frames: VecDeque::new(),
                first: 0,
                bytes: 0,
                local: 0,
                defs: 0,
                fenced: false,
                peers: HashMap::new(),
                sessions: 0,
            }),
            more: Notify::new(),
            confirmable,
            defs_replicated,
            defs: AtomicU64::new(0),
            lease_until: cluster.lease_until.clone(),
        })
    }

    /// Adds a frame built by `build`, which runs only if a follower is
    /// connected to receive it (the written bytes are not copied for none).
    fn push(&self, build: impl FnOnce() -> Vec<u8>) {
        {
            let mut st = self.st.lock();
            if st.peers.is_empty() {
                st.first += 1;
                return;
            }
            Self::push_in(&mut st, build());
        }
        self.more.notify_waiters();
    }

    /// Adds a frame to the stream (the caller notifies `more`).
    fn push_in(st: &mut HubState, frame: Vec<u8>) {
        if st.peers.is_empty() {
            // Nobody to send it to; a follower that joins catches up from the files.
            st.first += 1;
            return;
        }
        st.bytes += frame.len();
        st.frames.push_back(Arc::new(frame));
        while st.bytes > MAX_BACKLOG {
            // The slowest follower falls off the end: it ends its session
            // when it finds its cursor before `first`.
            let Some(f) = st.frames.pop_front() else { break };
            st.bytes -= f.len();
            st.first += 1;
        }
    }

    /// The message log changed a file.
    pub fn file_op(&self, op: FileOp<'_>) {
        self.push(|| match op {
            FileOp::Append { segment, offset, bytes } => {
                append_frame(&format!("messages/{}", warren_store::log::segment_file_name(segment)), offset, bytes)
            }
            FileOp::Delete { segment } => {
                frame(DELETE, |b| put_str(b, &format!("messages/{}", warren_store::log::segment_file_name(segment))))
            }
        });
    }

    /// A definitions file was saved: the new content, then a mark that
    /// followers acknowledge once it is durable there.
    pub fn saved(&self, path: &Path, bytes: &[u8]) {
        let Ok(rel) = path.strip_prefix(&self.dir) else { return };
        let rel = rel.to_string_lossy();
        let replace = frame(REPLACE, |b| {
            put_str(b, &rel);
            b.extend_from_slice(bytes);
        });
        {
            let mut st = self.st.lock();
            st.defs += 1;
            self.defs.store(st.defs, Ordering::Release);
            let mark = (st.local, st.defs);
            Self::push_in(&mut st, replace);
            Self::push_in(&mut st, mark_frame(SYNC, mark));
            self.recompute(&st);
        }
        self.more.notify_waiters();
    }

    /// Definitions saves so far: a reply to a durable declaration made
    /// now waits until `defs_replicated` reaches it.
    pub fn defs_saved(&self) -> u64 {
        self.defs.load(Ordering::Acquire)
    }

    /// Waits (up to `limit`) until every definitions save so far is on the
    /// followers; whether it is.
    pub async fn defs_replicated(&self, limit: Duration) -> bool {
        let want = self.defs_saved();
        let mut rx = self.defs_replicated.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|d| *d >= want)).await.is_ok_and(|r| r.is_ok())
    }

    /// The message log synced up to `pos` here.
    pub fn synced(&self, pos: u64) {
        {
            let mut st = self.st.lock();
            st.local = st.local.max(pos);
            let mark = (pos, st.defs);
            Self::push_in(&mut st, mark_frame(SYNC, mark));
            self.recompute(&st);
        }
        self.more.notify_waiters();
    }

    /// Advances what may be confirmed: synced here and on every follower
    /// counted, while the lease is surely held.
    fn recompute(&self, st: &HubState) {
        if st.fenced || super::clock_ms() >= self.lease_until.load(Ordering::Acquire) {
            return;
        }
        let counted = || st.peers.values().filter(|p| p.counted);
        let pos = counted().map(|p| p.acked).fold(st.local, u64::min);
        let defs = counted().map(|p| p.acked_defs).fold(st.defs, u64::min);
        for (watch, to) in [(&self.confirmable, pos), (&self.defs_replicated, defs)] {
            watch.send_if_modified(|c| {
                let moved = to > *c;
                *c = (*c).max(to);
                moved
            });
        }
    }

    /// Called after the lease is renewed: confirms held while it was in
    /// doubt may go.
    pub fn lease_renewed(&self) {
        self.recompute(&self.st.lock());
    }

    /// This node stopped leading: nothing more is confirmed.
    pub fn fence(&self) {
        self.st.lock().fenced = true;
    }

    /// Each follower: name, counted for confirms, acknowledged position, lag.
    pub fn followers(&self) -> Vec<Value> {
        let st = self.st.lock();
        let mut out: Vec<Value> = st
            .peers
            .iter()
            .map(|(name, p)| {
                json!({
                    "name": name,
                    "in_sync": p.counted && p.in_isr,
                    "acked_position": p.acked,
                    "lag_bytes": st.local.saturating_sub(p.acked),
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }
}

impl warren_node::cluster::ConfirmGate for Hub {
    fn defs_saved(&self) -> u64 {
        Hub::defs_saved(self)
    }

    fn defs_replicated(&self, limit: Duration) -> warren_node::cluster::BoxFuture<'_, bool> {
        Box::pin(Hub::defs_replicated(self, limit))
    }
}

/// Accepts followers on the cluster listener (the leader only).
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, cluster: Arc<Cluster>) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (hub, cluster) = (hub.clone(), cluster.clone());
        tokio::spawn(async move {
            if let Err(e) = session(socket, &hub, &cluster).await {
                info!(%peer, error = %e, "replication session ended");
            }
        });
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 octets")) as usize;
    if len > 16 << 20 {
        return Err(format!("follower frame of {len} octets"));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.map_err(|e| e.to_string())?;
    Ok((head[0], payload))
}

/// One follower's session on the leader.
async fn session(socket: TcpStream, hub: &Arc<Hub>, cluster: &Arc<Cluster>) -> Result<(), String> {
    let _ = socket.set_nodelay(true);
    let (mut rd, mut wr) = socket.into_split();
    let (kind, payload) = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd))
        .await
        .map_err(|_| "no hello".to_string())??;
    let mut f = Fields(&payload);
    let (name, node) = match kind {
        HELLO => (f.str()?.to_owned(), f.str()?.to_owned()),
        k => return Err(format!("expected hello, got frame {k}")),
    };
    let mut theirs = Held::new();
    while !f.0.is_empty() {
        let path = checked(f.str()?)?.to_owned();
        let size = f.u64()?;
        let digest: [u8; 32] = f.take(32)?.try_into().expect("32 octets");
        theirs.insert(path, (size, digest));
    }
    if name != cluster.settings.name || node == cluster.settings.node || !cluster.is_member(&node) {
        // (A node registers in etcd before it follows: one that is not
        // there yet is seen on the next tick and tries again.)
        return Err(format!("hello from {node:?} of cluster {name:?}: not one of our members"));
    }
    let Role::Leader { epoch } = cluster.role() else { return Err("not the leader".into()) };
    // Whatever it held, it is about to be overwritten: out of the ISR first.
    cluster.isr_change(&node, false).await?;
    let (me, files) = {
        let mut st = hub.st.lock();
        st.sessions += 1;
        let me = st.sessions;
        let cursor = st.first + st.frames.len() as u64;
        let (joined_at, joined_defs) = (st.local, st.defs);
        st.peers.insert(
            node.clone(),
            Peer {
                session: me,
                cursor,
                acked: 0,
                acked_defs: 0,
                joined_at,
                joined_defs,
                counted: false,
                in_isr: false,
                adding: false,
                heard: Instant::now(),
            },
        );
        // The files as of now: later changes are in the stream from `cursor`.
        let mut files = Vec::new();
        for dir in REPLICATED {
            let Ok(entries) = fs::read_dir(hub.dir.join(dir)) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = format!("{dir}/{name}");
                let wanted = match dir {
                    "messages" => name.ends_with(".seg"),
                    _ => name.ends_with(".json"),
                };
                if wanted && checked(&path).is_ok() {
                    files.push(path);
                }
            }
        }
        files.sort();
        (me, files)
    };
    info!(follower = %node, files = files.len(), "follower joined: sending what it lacks");
    let result = follow_up(rd, &mut wr, hub, cluster, &node, me, epoch, &files, &theirs).await;
    // Out of the ISR in etcd before confirms stop waiting for it.
    let counted = hub.st.lock().peers.get(&node).is_some_and(|p| p.session == me && (p.counted || p.in_isr));
    if counted {
        while let Err(e) = cluster.isr_change(&node, false).await {
            if !matches!(cluster.role(), Role::Leader { .. }) {
                return result;
            }
            warn!(follower = %node, error = %e, "cannot take a lost follower out of the ISR yet; confirms wait");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        info!(follower = %node, "follower left the in-sync replica set");
    }
    let mut st = hub.st.lock();
    if st.peers.get(&node).is_some_and(|p| p.session == me) {
        st.peers.remove(&node);
        if st.peers.is_empty() {
            st.first += st.frames.len() as u64;
            st.frames.clear();
            st.bytes = 0;
        }
    }
    hub.recompute(&st);
    result
}

#[allow(clippy::too_many_arguments)]
async fn follow_up(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    hub: &Arc<Hub>,
    cluster: &Arc<Cluster>,
    node: &str,
    me: u64,
    epoch: u64,
    files: &[String],
    theirs: &Held,
) -> Result<(), String> {
    let io = |e: io::Error| e.to_string();
    send(wr, &pos_frame(WELCOME, epoch)).await?;
    // What it holds and we do not goes; what it holds of ours stays, if
    // it is a prefix of our file; the rest is sent.
    let mut sent = 0u64;
    for path in theirs.keys().filter(|p| !files.contains(p)) {
        send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
    }
    for path in files {
        let full = hub.dir.join(path);
        if path.starts_with("definitions/") {
            // Gone since: its deletion, or a newer save, is in the stream.
            if let Ok(bytes) = tokio::fs::read(&full).await {
                let replace = frame(REPLACE, |b| {
                    put_str(b, path);
                    b.extend_from_slice(&bytes);
                });
                send(wr, &replace).await?;
            }
            continue;
        }
        let Ok(mut f) = tokio::fs::File::open(&full).await else {
            // Deleted since (the stream says so too): theirs must go.
            send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
            continue;
        };
        let mut offset = 0u64;
        if let Some((size, digest)) = theirs.get(path) {
            match prefix_digest(&mut f, *size).await.map_err(io)? {
                Some(ours) if ours == *digest => offset = *size,
                _ => {
                    send(wr, &frame(DELETE, |b| put_str(b, path))).await?;
                    f.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                }
            }
        }
        let mut buf = vec![0; COPY_CHUNK];
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            send(wr, &append_frame(path, offset, &buf[..n])).await?;
            offset += n as u64;
            sent += n as u64;
        }
    }
    info!(follower = %node, bytes = sent, "follower has the leader's files");
    let joined = {
        let mut st = hub.st.lock();
        let p = st.peers.get_mut(node).filter(|p| p.session == me).ok_or("replaced by a newer session")?;
        // Its first acknowledgement syncs all it was sent: give it time.
        p.heard = Instant::now() + CATCH_UP_GRACE;
        (p.joined_at, p.joined_defs)
    };
    send(wr, &mark_frame(SYNC, joined)).await?;

    // Acknowledgements come in on their own task.
    let acks = {
        let (hub, cluster, node) = (hub.clone(), cluster.clone(), node.to_owned());
        tokio::spawn(async move { read_acks(&mut rd, &hub, &cluster, &node, me).await })
    };
    let out = send_stream(wr, hub, node, me).await;
    acks.abort();
    out
}

/// Reads a follower's acknowledgements: each moves its position; one that
/// reaches what the leader had when it joined counts it for confirms, then
/// puts it in the ISR in etcd.
async fn read_acks(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    hub: &Arc<Hub>,
    cluster: &Arc<Cluster>,
    node: &str,
    me: u64,
) -> Result<(), String> {
    loop {
        let (kind, payload) = read_frame(rd).await?;
        if kind != ACK {
            return Err(format!("unexpected frame {kind} from a follower"));
        }
        let mut f = Fields(&payload);
        let (pos, defs) = (f.u64()?, f.u64()?);
        let add = {
            let mut st = hub.st.lock();
            let local = st.local;
            let Some(p) = st.peers.get_mut(node).filter(|p| p.session == me) else { return Ok(()) };
            p.acked = p.acked.max(pos);
            p.acked_defs = p.acked_defs.max(defs);
            p.heard = Instant::now();
            let caught_up = p.acked >= p.joined_at && p.acked_defs >= p.joined_defs;
            if !p.counted && caught_up && local.saturating_sub(p.acked) <= ISR_LAG {
                // Counted from now on, so that nothing is confirmed without
                // it once etcd names it in sync.
                p.counted = true;
            }
            let add = p.counted && !p.in_isr && !p.adding;
            if add {
                p.adding = true;
            }
            hub.recompute(&st);
            add
        };
        if add {
            let (hub, cluster, node) = (hub.clone(), cluster.clone(), node.to_owned());
            tokio::spawn(async move {
                let added = cluster.isr_change(&node, true).await;
                let mut st = hub.st.lock();
                if let Some(p) = st.peers.get_mut(&node).filter(|p| p.session == me) {
                    p.adding = false;
                    match added {
                        Ok(()) => {
                            p.in_isr = true;
                            info!(follower = %node, "follower caught up: in the in-sync replica set");
                        }
                        Err(e) => warn!(follower = %node, error = %e, "cannot add a follower to the ISR yet"),
                    }
                }
            });
        }
    }
}

/// Sends a follower the stream from its cursor, pinging it when idle;
/// ends when it falls behind, goes silent, or another session replaces it.
async fn send_stream(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    hub: &Arc<Hub>,
    node: &str,
    me: u64,
) -> Result<(), String> {
    loop {
        let notified = hub.more.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch: Vec<Arc<Vec<u8>>> = {
            let mut st = hub.st.lock();
            let (first, end) = (st.first, st.first + st.frames.len() as u64);
            let Some(p) = st.peers.get(node).filter(|p| p.session == me) else {
                return Err("replaced by a newer session".into());
            };
            if p.heard.elapsed() > FOLLOWER_TIMEOUT {
                return Err(format!("follower silent for {:?}", p.heard.elapsed()));
            }
            if p.cursor < first {
                return Err("follower fell too far behind".into());
            }
            let from = p.cursor;
            let mut size = 0;
            let batch: Vec<_> = st
                .frames
                .range((from - first) as usize..)
                .take_while(|f| {
                    size += f.len();
                    size <= 4 << 20
                })
                .cloned()
                .collect();
            let batch =
                if batch.is_empty() && from < end { vec![st.frames[(from - first) as usize].clone()] } else { batch };
            if let Some(p) = st.peers.get_mut(node) {
                p.cursor = from + batch.len() as u64;
            }
            // Frames every follower has are dropped.
            let low = st.peers.values().map(|p| p.cursor).min().unwrap_or(end);
            while st.first < low {
                let Some(f) = st.frames.pop_front() else { break };
                st.bytes -= f.len();
                st.first += 1;
            }
            batch
        };
        if batch.is_empty() {
            if tokio::time::timeout(PING_EVERY, notified).await.is_err() {
                send(wr, &frame(PING, |_| {})).await?;
            }
            continue;
        }
        for f in batch {
            send(wr, &f).await?;
        }
    }
}

// ---------------------------------------------------------------- follower

/// Applies the leader's stream to this node's data directory.
struct Applier {
    dir: PathBuf,
    open: HashMap<String, File>,
    dirty: HashSet<String>,
    dirs_dirty: bool,
    /// Written since the last flush.
    unsynced: u64,
}

impl Applier {
    fn new(dir: PathBuf) -> Applier {
        Applier { dir, open: HashMap::new(), dirty: HashSet::new(), dirs_dirty: false, unsynced: 0 }
    }

    /// Every replicated file held here, with its size and SHA-256: the
    /// leader sends only what differs.
    fn inventory(&mut self) -> io::Result<Vec<(String, u64, [u8; 32])>> {
        use sha2::Digest;
        self.flush()?;
        self.open.clear();
        let mut out = Vec::new();
        for d in REPLICATED {
            let dir = self.dir.join(d);
            fs::create_dir_all(&dir)?;
            for e in fs::read_dir(&dir)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = format!("{d}/{name}");
                if !(name.ends_with(".seg") || name.ends_with(".json")) || checked(&path).is_err() {
                    continue;
                }
                let mut h = sha2::Sha256::new();
                let mut f = File::open(e.path())?;
                let mut buf = vec![0; COPY_CHUNK];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    size += n as u64;
                }
                out.push((path, size, h.finalize().into()));
            }
        }
        Ok(out)
    }

    fn append(&mut self, path: &str, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let f = match self.open.entry(path.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let full = self.dir.join(path);
                if !full.exists() {
                    self.dirs_dirty = true;
                }
                e.insert(
                    OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(false)
                        .open(full)
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if offset > len {
            return Err(format!("{path}: {len} octets here, the leader appends at {offset}: diverged"));
        }
        f.write_all_at(bytes, offset).map_err(|e| e.to_string())?;
        self.unsynced += bytes.len() as u64;
        self.dirty.insert(path.to_owned());
        Ok(())
    }

    fn delete(&mut self, path: &str) -> Result<(), String> {
        self.open.remove(path);
        self.dirty.remove(path);
        match fs::remove_file(self.dir.join(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.to_string()),
            _ => {}
        }
        self.dirs_dirty = true;
        Ok(())
    }

    fn replace(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.open.remove(path);
        self.dirty.remove(path);
        let full = self.dir.join(path);
        let tmp = full.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &full)?;
        self.dirs_dirty = true;
        Ok(())
    }

    /// Makes everything applied so far durable.
    fn flush(&mut self) -> io::Result<()> {
        self.unsynced = 0;
        for path in self.dirty.drain() {
            if let Some(f) = self.open.get(&path) {
                f.sync_data()?;
            }
        }
        if self.dirs_dirty {
            for d in REPLICATED {
                File::open(self.dir.join(d))?.sync_all()?;
            }
            self.dirs_dirty = false;
        }
        // Keep the files still being appended to open, close the rest.
        if self.open.len() > 4 {
            self.open.clear();
        }
        Ok(())
    }
}

/// The follower's side, on its own thread until `stop`: replicates from
/// whichever node etcd names leader, reconnecting as that changes.
pub fn follow(cluster: Arc<Cluster>, data_dir: PathBuf, stop: Arc<AtomicBool>) {
    let mut applier = Applier::new(data_dir);
    // The last failure logged: the same one again (a leader that is gone
    // refuses every retry until its lease lapses) is not repeated.
    let mut last_error = String::new();
    while !stop.load(Ordering::Acquire) {
        let Role::Follower { leader, repl, epoch, .. } = cluster.role() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        match follow_leader(&cluster, &mut applier, &repl, epoch, &stop) {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let seen = format!("{leader} {epoch} {e}");
                if seen != last_error {
                    warn!(%leader, epoch, error = %e, "replication from the leader stopped");
                    last_error = seen;
                }
            }
        }
        if let Err(e) = applier.flush() {
            warn!(error = %e, "cannot sync the replicated data");
        }
        if !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if let Err(e) = applier.flush() {
        warn!(error = %e, "cannot sync the replicated data");
    }
}

fn follow_leader(
    cluster: &Cluster,
    applier: &mut Applier,
    repl: &str,
    epoch: u64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(repl)
        .map_err(|e| format!("{repl}: {e}"))?
        .next()
        .ok_or_else(|| format!("{repl}: no address"))?;
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let held = applier.inventory().map_err(|e| format!("cannot read the data directory: {e}"))?;
    s.write_all(&frame(HELLO, |b| {
        put_str(b, &cluster.settings.name);
        put_str(b, &cluster.settings.node);
        for (path, size, digest) in &held {
            put_str(b, path);
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(digest);
        }
    }))
    .map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    // Fault injection for tests (`WARREN_FAULT_REPLICA_DELAY_MS`): a slow
    // link — what the leader sends is in flight this long before the
    // follower sees it, and lost if the connection ends meanwhile (as when
    // the leader's machine dies). Only in builds with `fault-injection`.
    let delay = std::env::var("WARREN_FAULT_REPLICA_DELAY_MS")
        .ok()
        .filter(|_| cfg!(feature = "fault-injection"))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut in_flight: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    if delay.is_some() {
        s.set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
    }
    let mut welcomed = false;
    let mut heard = Instant::now();
    // The last mark acknowledged: log position, definitions saves.
    let mut acked = (0u64, 0u64);
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if !matches!(cluster.role(), Role::Follower { epoch: e, .. } if e == epoch) {
            return Ok(());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("the leader closed the connection".into()),
            Ok(n) => {
                heard = Instant::now();
                match delay {
                    Some(_) => in_flight.push_back((heard, chunk[..n].to_vec())),
                    None => buf.extend_from_slice(&chunk[..n]),
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if heard.elapsed() > LEADER_SILENCE {
                    return Err(format!("nothing from the leader for {:?}", heard.elapsed()));
                }
                if in_flight.is_empty() {
                    continue;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        if let Some(d) = delay {
            while in_flight.front().is_some_and(|(at, _)| at.elapsed() >= d) {
                buf.extend_from_slice(&in_flight.pop_front().expect("checked").1);
            }
        }
        // Apply every whole frame received; acknowledge once caught up.
        let mut at = 0;
        let mut ack = None;
        while let Some((kind, range)) = next_frame(&buf, at)? {
            at = range.end;
            let mut f = Fields(&buf[range]);
            if !welcomed && kind != WELCOME {
                return Err(format!("frame {kind} before the welcome"));
            }
            match kind {
                WELCOME => {
                    let theirs = f.u64()?;
                    if theirs != epoch {
                        return Err(format!("leader of epoch {theirs}, expected {epoch}"));
                    }
                    welcomed = true;
                    info!(epoch, "replicating from the leader");
                }
                APPEND => {
                    let path = checked(f.str()?)?.to_owned();
                    let offset = f.u64()?;
                    applier.append(&path, offset, f.0)?;
                }
                DELETE => {
                    let path = checked(f.str()?)?.to_owned();
                    applier.delete(&path)?;
                }
                REPLACE => {
                    let path = checked(f.str()?)?.to_owned();
                    applier.replace(&path, f.0).map_err(|e| format!("{path}: {e}"))?;
                }
                SYNC => ack = Some((f.u64()?, f.u64()?)),
                PING => ack = Some(ack.unwrap_or(acked)),
                k => return Err(format!("unknown replication frame {k}")),
            }
        }
        buf.drain(..at);
        if ack.is_none() && applier.unsynced > FLUSH_EVERY {
            // A long catch-up: sync as it goes, so that the acknowledgement
            // at its end does not wait for all of it.
            applier.flush().map_err(|e| format!("cannot sync the replicated data: {e}"))?;
        }
        if let Some((pos, defs)) = ack {
            applier.flush().map_err(|e| format!("cannot sync the replicated data: {e}"))?;
            acked = (acked.0.max(pos), acked.1.max(defs));
            s.write_all(&mark_frame(ACK, acked)).map_err(|e| e.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-repl-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn frames_are_read_only_once_whole() {
        let mut buf = append_frame("messages/00000001.seg", 7, b"abc");
        buf.extend_from_slice(&mark_frame(SYNC, (42, 3)));
        let whole = buf.len();
        // Cut anywhere inside the second frame: only the first is read.
        let first = next_frame(&buf[..whole - 1], 0).unwrap().unwrap();
        assert_eq!(first.0, APPEND);
        assert_eq!(next_frame(&buf[..whole - 1], first.1.end).unwrap(), None);
        let (kind, range) = next_frame(&buf, first.1.end).unwrap().unwrap();
        let mut f = Fields(&buf[range]);
        assert_eq!((kind, f.u64().unwrap(), f.u64().unwrap()), (SYNC, 42, 3));
        let mut f = Fields(&buf[first.1]);
        assert_eq!(f.str().unwrap(), "messages/00000001.seg");
        assert_eq!(f.u64().unwrap(), 7);
        assert_eq!(f.0, b"abc");
        // A length beyond any frame is refused, not allocated.
        assert!(next_frame(&[APPEND, 0xff, 0xff, 0xff, 0xff], 0).is_err());
    }

    #[test]
    fn only_files_of_the_replicated_directories_are_named() {
        for ok in ["messages/00000001.seg", "definitions/vhost-2f.json", "definitions/access.json"] {
            assert!(checked(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../etc/passwd",
            "messages/../../x",
            "messages/",
            "spill/1",
            "/messages/1.seg",
            "messages/a/b",
            "messages/.hidden",
            "LOCK",
            "definitions/ü.json",
        ] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_applier_mirrors_appends_deletions_and_replacements() {
        let dir = tmp("apply");
        let mut a = Applier::new(dir.clone());
        assert!(a.inventory().unwrap().is_empty());
        a.append("messages/00000001.seg", 0, b"hello ").unwrap();
        a.append("messages/00000001.seg", 6, b"world").unwrap();
        // Again at an offset it holds (the copy and the stream overlap).
        a.append("messages/00000001.seg", 6, b"world").unwrap();
        // Past its end: the replica has diverged.
        assert!(a.append("messages/00000001.seg", 100, b"x").is_err());
        a.append("messages/00000002.seg", 0, b"two").unwrap();
        a.replace("definitions/access.json", b"{}").unwrap();
        a.flush().unwrap();
        assert_eq!(fs::read(dir.join("messages/00000001.seg")).unwrap(), b"hello world");
        a.delete("messages/00000002.seg").unwrap();
        a.delete("messages/00000002.seg").unwrap();
        a.replace("definitions/access.json", b"{\"users\":[]}").unwrap();
        a.flush().unwrap();
        let held = a.inventory().unwrap();
        let names: Vec<&str> = held.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"messages/00000001.seg") && names.contains(&"definitions/access.json"));
        let (_, size, digest) = held.iter().find(|(p, _, _)| p == "messages/00000001.seg").unwrap();
        use sha2::Digest;
        assert_eq!((*size, *digest), (11, <[u8; 32]>::from(sha2::Sha256::digest(b"hello world"))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_prefix_digest_matches_only_a_prefix() {
        use sha2::Digest;
        let dir = tmp("prefix");
        let path = dir.join("f");
        fs::write(&path, b"hello world").unwrap();
        let mut f = tokio::fs::File::open(&path).await.unwrap();
        let want: [u8; 32] = sha2::Sha256::digest(b"hello").into();
        assert_eq!(prefix_digest(&mut f, 5).await.unwrap(), Some(want));
        let mut f = tokio::fs::File::open(&path).await.unwrap();
        assert_eq!(prefix_digest(&mut f, 12).await.unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
