//! The message log: the on-disk record of persistent messages in durable
//! queues. Format and recovery rules: `docs/storage.md` (format version 1).
//!
//! One append-only log serves every durable queue. A persistent message is
//! written once, as a publish record naming every durable queue it went to
//! (fanout to N queues does not write the body N times). Acks and delivery
//! counts are small records appended lazily. The log is cut into segment
//! files; a segment is deleted once nothing in it is live and every older
//! segment is gone (so an ack record can never outlive the publish it
//! cancels without the publish being gone too).
//!
//! Group commit: appenders only copy their record into a shared buffer under
//! a mutex and get back a position. A flusher thread writes the buffer,
//! `fdatasync`s once for everybody, and then reports the synced position, at
//! which point publisher confirms up to it may be sent. Acks alone never
//! force a sync (they reach disk with the next one).
//!
//! Every write is an ordered stream of file operations (append to segment,
//! delete segment), which a follower could later apply byte for byte.

mod writer;

use writer::flush_loop;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use bytes::Bytes;
use tracing::{error, info, warn};

/// Magic and version at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WRNLOG01";
/// A segment is closed once it holds this many bytes.
pub const SEGMENT_TARGET: u64 = 64 << 20;
/// Record header: payload length (u32), CRC-32 of type byte + payload (u32).
const HEADER: usize = 8;
/// Records larger than this are treated as corruption during recovery.
const MAX_RECORD: u32 = 256 << 20;

const T_PUBLISH: u8 = 1;
const T_ACK: u8 = 2;
const T_DELIVERED: u8 = 3;
const T_QUEUE_DELETED: u8 = 4;

/// Where a persisted message lives: its id and where its publish record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    pub msg_id: u64,
    pub segment: u32,
    /// Byte offset of the publish record in its segment file.
    pub offset: u32,
    /// Logical log position just past the record, this run (0 when
    /// recovered): it is on disk once `synced()` reaches this.
    pub end: u64,
}

impl Persisted {
    /// The record's address in one `u64` (segment high, offset low): what a
    /// queue keeps for a message it paged out; [`crate::MessageStore::read`]
    /// takes it back.
    pub fn location(&self) -> u64 {
        ((self.segment as u64) << 32) | self.offset as u64
    }
}

/// A message read back from the log by its location.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub persisted: Persisted,
    pub published_at: u64,
    pub message: StoredMessage,
}

/// The fields of a message as the log keeps them.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub exchange: String,
    pub routing_key: String,
    /// Slices of the segment buffer they were read from (no copy).
    pub properties: Bytes,
    pub body: Bytes,
}

/// One message found in a queue during recovery, in log order. Its content
/// stays on disk: read it back with [`crate::MessageStore::read`] (queues
/// page recovered messages in lazily, so a restart holds no bodies).
#[derive(Debug, Clone)]
pub struct RecoveredEntry {
    pub persisted: Persisted,
    /// When it was published (ms since the Unix epoch), for TTLs.
    pub published_at: u64,
    pub body_len: u32,
    pub delivery_count: u32,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// queue key → its messages, oldest first.
    pub queues: HashMap<String, Vec<RecoveredEntry>>,
    /// Records skipped because their checksum did not match.
    pub dropped_records: u64,
    /// Bytes cut from torn segment tails.
    pub truncated_bytes: u64,
}

struct Chunk {
    segment: u32,
    bytes: Vec<u8>,
    /// Whether it holds a publish record (needs a sync before confirms).
    durable: bool,
}

struct WriterState {
    chunks: Vec<Chunk>,
    /// Current segment and its size including what is buffered.
    segment: u32,
    segment_size: u64,
    /// Logical position: total bytes appended since open.
    appended: u64,
    /// Live (queue, message) pairs whose publish record is in each segment.
    live: BTreeMap<u32, u64>,
    /// Every segment that exists or is about to, oldest first.
    on_disk: std::collections::VecDeque<u32>,
    next_msg_id: u64,
    /// First message id published in each segment (this run and recovered):
    /// maps an ack's message id to the segment of its publish record.
    first_id: BTreeMap<u32, u64>,
    /// Segment → older segments whose messages it holds ack or delivered
    /// records for: it may go only once they are gone, or once those
    /// records are copied forward (compaction).
    deps: BTreeMap<u32, std::collections::BTreeSet<u32>>,
    /// Segments holding a queue-deleted record: they go only after every
    /// older segment (that record is never copied).
    barriers: std::collections::BTreeSet<u32>,
    /// Compacted segments, deleted once the log is synced past the copies.
    doomed: Vec<(u32, u64)>,
}

/// Told the synced position after every flush.
type SyncCallback = Box<dyn Fn(u64) + Send>;

/// During recovery, per message: where its publish record is, and the
/// queues still holding it with their delivery counts. No content: a
/// restart with millions of messages must not hold their bodies.
struct Pending {
    segment: u32,
    offset: u32,
    published_at: u64,
    body_len: u32,
    queues: Holders,
}

/// (queue index, delivery count) per queue still holding a message; one
/// queue (the common case) without an allocation.
enum Holders {
    One(u32, u32),
    Many(Vec<(u32, u32)>),
    None,
}

impl Holders {
    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        match self {
            Holders::One(q, _) if !keep(*q) => *self = Holders::None,
            Holders::Many(v) => v.retain(|(q, _)| keep(*q)),
            _ => {}
        }
    }

    fn count_mut(&mut self, queue: u32) -> Option<&mut u32> {
        match self {
            Holders::One(q, c) if *q == queue => Some(c),
            Holders::Many(v) => v.iter_mut().find(|(q, _)| *q == queue).map(|(_, c)| c),
            _ => None,
        }
    }

    fn into_vec(self) -> Vec<(u32, u32)> {
        match self {
            Holders::One(q, c) => vec![(q, c)],
            Holders::Many(v) => v,
            Holders::None => Vec::new(),
        }
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<WriterState>,
    wake: Condvar,
    /// Logical position durable on disk.
    synced: AtomicU64,
    /// Set when a write or sync failed: confirms stop until it clears.
    failed: AtomicBool,
    on_sync: Mutex<Option<SyncCallback>>,
    shutdown: AtomicBool,
    /// Fault injection for tests (`WARREN_FAULT_LOG_WRITE_LIMIT`, see
    /// [`fault_write_limit`]): writes past this many bytes (this process)
    /// fail as if the disk were full.
    write_limit: Option<u64>,
    written: AtomicU64,
    /// Segment files opened for reading paged-out messages back.
    readers: Mutex<HashMap<u32, Arc<File>>>,
    segment_target: u64,
    /// Told every change to the files (replication), if set.
    file_ops: Mutex<Option<FileOpObserver>>,
}

/// One change to the log's files, in the order the flusher made it: what a
/// replica applies (with [`crate::replica::Replica`]) to hold the same bytes. Appends
/// are reported once written (before their sync), deletions once done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp<'a> {
    /// `bytes` written at `offset` of segment `segment` (a new segment's
    /// first append is its header, at offset 0).
    Append { segment: u32, offset: u64, bytes: &'a [u8] },
    /// Segment `segment` was deleted.
    Delete { segment: u32 },
    /// Everything up to log position `pos` is written, and this node syncs
    /// it next: a replica may sync it at the same time (its acknowledgement
    /// still counts only with this node's own sync).
    Written { pos: u64 },
}

pub type FileOpObserver = Box<dyn Fn(FileOp<'_>) + Send + Sync>;

/// Handle to the message log; cheap to clone.
#[derive(Clone)]
pub struct MessageLog {
    shared: Arc<Shared>,
    /// The flusher thread, joined by `reopen` (tests) so that the old log
    /// has stopped touching files before the new one recovers them.
    flusher: Arc<Mutex<Option<thread::JoinHandle<()>>>>,
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(segment_file_name(n))
}

/// The name of segment `n`'s file in the log's directory.
pub fn segment_file_name(n: u32) -> String {
    format!("{n:08}.seg")
}

fn put_str16(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_bytes32(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s);
}

/// Reads fields back out of a record payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// `WARREN_FAULT_LOG_WRITE_LIMIT=BYTES`, read only in builds with the
/// `fault-injection` feature (the test suite's): a release build never
/// looks at it.
fn fault_write_limit() -> Option<u64> {
    if !cfg!(feature = "fault-injection") {
        return None;
    }
    std::env::var("WARREN_FAULT_LOG_WRITE_LIMIT").ok().and_then(|v| v.parse().ok())
}

impl MessageLog {
    /// Opens (creating if needed) the log in `dir`, recovering what is there.
    pub fn open(dir: &Path) -> io::Result<(MessageLog, Recovered)> {
        Self::open_with(dir, SEGMENT_TARGET)
    }

    /// Same, closing segments at `segment_target` bytes (small in tests, so
    /// that segment deletion and compaction happen often).
    pub fn open_with(dir: &Path, segment_target: u64) -> io::Result<(MessageLog, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<u32> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let mut rec = Recovered::default();
        let mut live: BTreeMap<u32, u64> = BTreeMap::new();
        let mut next_msg_id = 1;
        // Queue keys are interned: records name them by index from here on.
        let mut queue_names: Vec<String> = Vec::new();
        let mut queue_index: HashMap<String, u32> = HashMap::new();
        // Messages by id (ids are assigned in log order): pending[id - base].
        let mut base: Option<u64> = None;
        let mut pending: Vec<Option<Pending>> = Vec::new();
        let mut first_id: BTreeMap<u32, u64> = BTreeMap::new();
        let mut deps: BTreeMap<u32, std::collections::BTreeSet<u32>> = BTreeMap::new();
        let mut barriers = std::collections::BTreeSet::new();
        for &seg in &segments {
            let path = segment_path(dir, seg);
            let mut raw = Vec::new();
            File::open(&path)?.read_to_end(&mut raw)?;
            let data = Bytes::from(raw);
            let good = Self::scan(&data, seg, &mut rec, |kind, mut c, offset| {
                match kind {
                    T_PUBLISH => {
                        let Some(msg_id) = c.u64() else { return false };
                        let Some(published_at) = c.u64() else { return false };
                        let Some(nq) = c.u16() else { return false };
                        let mut queues = Vec::with_capacity(nq as usize);
                        for _ in 0..nq {
                            let Some(q) = c.str16() else { return false };
                            let idx = match queue_index.get(q) {
                                Some(i) => *i,
                                None => {
                                    queue_names.push(q.to_owned());
                                    queue_index.insert(q.to_owned(), queue_names.len() as u32 - 1);
                                    queue_names.len() as u32 - 1
                                }
                            };
                            queues.push((idx, 0));
                        }
                        let (Some(_exchange), Some(_routing_key), Some(_properties), Some(body)) =
                            (c.str16(), c.str16(), c.bytes32(), c.bytes32())
                        else {
                            return false;
                        };
                        next_msg_id = next_msg_id.max(msg_id + 1);
                        first_id.entry(seg).or_insert(msg_id);
                        let queues = match queues.len() {
                            1 => Holders::One(queues[0].0, 0),
                            _ => Holders::Many(queues),
                        };
                        let b = *base.get_or_insert(msg_id);
                        if msg_id < b {
                            return false;
                        }
                        let at = (msg_id - b) as usize;
                        if at >= pending.len() {
                            pending.resize_with(at + 1, || None);
                        }
                        pending[at] =
                            Some(Pending { segment: seg, offset, published_at, body_len: body.len() as u32, queues });
                    }
                    T_ACK | T_DELIVERED => {
                        let Some(msg_id) = c.u64() else { return false };
                        let count = if kind == T_DELIVERED { c.u32() } else { Some(0) };
                        let (Some(count), Some(q)) = (count, c.str16()) else { return false };
                        let (Some(&qi), Some(b)) = (queue_index.get(q), base) else { return true };
                        let Some(Some(p)) = msg_id.checked_sub(b).and_then(|i| pending.get_mut(i as usize)) else {
                            return true;
                        };
                        if p.segment != seg {
                            deps.entry(seg).or_default().insert(p.segment);
                        }
                        if kind == T_ACK {
                            p.queues.retain(|idx| idx != qi);
                        } else if let Some(c) = p.queues.count_mut(qi) {
                            *c = (*c).max(count);
                        }
                    }
                    T_QUEUE_DELETED => {
                        let Some(q) = c.str16() else { return false };
                        barriers.insert(seg);
                        if let Some(&qi) = queue_index.get(q) {
                            for p in pending.iter_mut().flatten() {
                                p.queues.retain(|idx| idx != qi);
                            }
                        }
                    }
                    _ => return false,
                }
                true
            });
            if good < data.len() {
                let cut = (data.len() - good) as u64;
                warn!(segment = seg, bytes = cut, "truncating torn or corrupt segment tail");
                rec.truncated_bytes += cut;
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good.max(SEGMENT_MAGIC.len()) as u64)?;
                f.sync_all()?;
            }
        }
        let mut by_queue: Vec<Vec<RecoveredEntry>> = queue_names.iter().map(|_| Vec::new()).collect();
        let first = base.unwrap_or(0);
        for (i, p) in pending.into_iter().enumerate() {
            let Some(p) = p else { continue };
            let msg_id = first + i as u64;
            for (qi, count) in p.queues.into_vec() {
                *live.entry(p.segment).or_default() += 1;
                by_queue[qi as usize].push(RecoveredEntry {
                    persisted: Persisted { msg_id, segment: p.segment, offset: p.offset, end: 0 },
                    published_at: p.published_at,
                    body_len: p.body_len,
                    delivery_count: count,
                });
            }
        }
        for (name, entries) in queue_names.into_iter().zip(by_queue) {
            if !entries.is_empty() {
                rec.queues.insert(name, entries);
            }
        }
        if rec.dropped_records > 0 {
            warn!(records = rec.dropped_records, "dropped corrupt records from the message log");
        }
        // New writes go to a fresh segment: recovered ones are never appended to.
        let segment = segments.last().map_or(1, |s| s + 1);
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            state: Mutex::new(WriterState {
                chunks: Vec::new(),
                segment,
                segment_size: 0,
                appended: 0,
                live,
                on_disk: segments.iter().copied().collect(),
                next_msg_id,
                first_id,
                deps,
                barriers,
                doomed: Vec::new(),
            }),
            wake: Condvar::new(),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            on_sync: Mutex::new(None),
            file_ops: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            write_limit: fault_write_limit(),
            written: AtomicU64::new(0),
            readers: Mutex::new(HashMap::new()),
            segment_target,
        });
        let log = MessageLog { shared, flusher: Default::default() };
        log.collect_garbage();
        let flusher = log.shared.clone();
        let handle = thread::Builder::new().name("warren-log-flusher".into()).spawn(move || flush_loop(flusher))?;
        *log.flusher.lock().unwrap() = Some(handle);
        let n: usize = rec.queues.values().map(|v| v.len()).sum();
        info!(messages = n, queues = rec.queues.len(), segments = segments.len(), "message log recovered");
        Ok((log, rec))
    }

    /// Walks the records of one segment, calling `f` for each good one.
    /// Returns the length of the good prefix (where a torn tail starts).
    fn scan(data: &Bytes, seg: u32, rec: &mut Recovered, mut f: impl FnMut(u8, Cursor<'_>, u32) -> bool) -> usize {
        if data.len() < SEGMENT_MAGIC.len() || &data[..8] != SEGMENT_MAGIC {
            warn!(segment = seg, "segment without a valid header; ignoring its content");
            return 0;
        }
        let mut at = SEGMENT_MAGIC.len();
        while at + HEADER < data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            let crc = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap());
            if len > MAX_RECORD || at + HEADER + 1 + len as usize > data.len() {
                return at; // torn tail (or a length we cannot trust)
            }
            let body = &data[at + HEADER..at + HEADER + 1 + len as usize];
            if crc32fast::hash(body) != crc || !f(body[0], Cursor(&body[1..]), at as u32) {
                rec.dropped_records += 1;
            }
            at += HEADER + 1 + len as usize;
        }
        at
    }

    /// Appends one record; returns (segment, offset, logical end position).
    /// For a publish record, the message id (its first 8 octets) is
    /// assigned here, under the same lock as the append, so that ids
    /// follow log order (recovery relies on it).
    fn append(&self, kind: u8, payload: &mut [u8], durable: bool, live: u64, target: Option<u32>) -> (u32, u32, u64) {
        let (seg, offset, pos, id) =
            self.append_with(kind, payload.len(), durable, live, target, |b| b.extend_from_slice(payload));
        if let Some(id) = id {
            payload[..8].copy_from_slice(&id.to_be_bytes());
        }
        (seg, offset, pos)
    }

    /// Appends one record of `len` octets that `fill` writes straight into
    /// the chunk (no copy of it is made first); also returns a publish
    /// record's message id.
    fn append_with(
        &self,
        kind: u8,
        len: usize,
        durable: bool,
        live: u64,
        target: Option<u32>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> (u32, u32, u64, Option<u64>) {
        let mut st = self.shared.state.lock().unwrap();
        let mut id = None;
        if kind == T_PUBLISH {
            id = Some(st.next_msg_id);
            st.next_msg_id += 1;
        }
        let size = (HEADER + 1 + len) as u64;
        if st.segment_size > 0 && st.segment_size + size > self.shared.segment_target {
            st.segment += 1;
            st.segment_size = 0;
        }
        let seg = st.segment;
        if let Some(id) = id {
            st.first_id.entry(seg).or_insert(id);
        }
        match target {
            Some(t) if t != seg => {
                st.deps.entry(seg).or_default().insert(t);
            }
            _ => {}
        }
        if kind == T_QUEUE_DELETED {
            st.barriers.insert(seg);
        }
        // The file starts with the magic; `segment_size` counts records only.
        let offset = (SEGMENT_MAGIC.len() as u64 + st.segment_size) as u32;
        if st.on_disk.back() != Some(&seg) {
            st.on_disk.push_back(seg);
        }
        // The flusher is woken by the append that finds nothing waiting: it
        // takes every chunk at once, so later appends are taken with that
        // one. (A notification is a `futex` call even when nobody waits;
        // one per record cost three system calls a persistent message.)
        let wake = st.chunks.is_empty();
        if st.chunks.last().is_none_or(|c| c.segment != seg) {
            st.chunks.push(Chunk { segment: seg, bytes: Vec::with_capacity(64 << 10), durable: false });
        }
        st.segment_size += size;
        st.appended += size;
        if live > 0 {
            *st.live.entry(seg).or_default() += live;
        }
        let chunk = st.chunks.last_mut().expect("pushed above");
        chunk.durable |= durable;
        // Length and CRC are written once the record is in place.
        let start = chunk.bytes.len();
        chunk.bytes.reserve(HEADER + 1 + len);
        chunk.bytes.extend_from_slice(&[0; HEADER]);
        chunk.bytes.push(kind);
        fill(&mut chunk.bytes);
        debug_assert_eq!(chunk.bytes.len() - start, HEADER + 1 + len, "a record as long as announced");
        if let Some(id) = id {
            chunk.bytes[start + HEADER + 1..start + HEADER + 9].copy_from_slice(&id.to_be_bytes());
        }
        let crc = crc32fast::hash(&chunk.bytes[start + HEADER..]);
        chunk.bytes[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        chunk.bytes[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        let pos = st.appended;
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
        (seg, offset, pos, id)
    }

    /// The open file of a segment, for reading records back.
    fn reader(&self, seg: u32) -> io::Result<Arc<File>> {
        let mut files = self.shared.readers.lock().unwrap();
        if let Some(f) = files.get(&seg) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.shared.dir, seg))?);
        files.insert(seg, f.clone());
        Ok(f)
    }

    /// Closes this log and opens it again, as a restart would.
    pub fn reopen(&self) -> io::Result<(MessageLog, Recovered)> {
        crate::MessageStore::close_and_join(self);
        MessageLog::open_with(&self.shared.dir, self.shared.segment_target)
    }

    /// Deletes segments nothing needs any more. A segment with no live
    /// message may go once no older segment still holds a message it has
    /// ack or delivered records for; if one does, those records are copied
    /// to the newest segment first (compaction) and the segment goes once
    /// the copies are synced. So a long-unacked message keeps only its own
    /// segment, not every newer one. A segment with a queue-deleted record
    /// waits for every older one.
    fn collect_garbage(&self) {
        let synced = self.shared.synced.load(Ordering::Acquire);
        let mut compact = Vec::new();
        {
            let mut st = self.shared.state.lock().unwrap();
            let doomed = std::mem::take(&mut st.doomed);
            for (seg, pos) in doomed {
                if pos <= synced {
                    self.delete_segment(&mut st, seg);
                } else {
                    st.doomed.push((seg, pos));
                }
            }
            let current = st.segment;
            let candidates: Vec<u32> = st.on_disk.iter().copied().filter(|s| *s < current).collect();
            for seg in candidates {
                if st.live.get(&seg).copied().unwrap_or(0) > 0 || st.doomed.iter().any(|(d, _)| *d == seg) {
                    continue;
                }
                // Records appended to it before the rotation but not yet
                // written: compaction would read the file without them (and
                // lose the acks among them when the segment goes).
                if st.chunks.iter().any(|c| c.segment == seg) {
                    continue;
                }
                let older: Vec<u32> = st.on_disk.iter().copied().filter(|s| *s < seg).collect();
                if st.barriers.contains(&seg) && !older.is_empty() {
                    continue;
                }
                let needed = st.deps.get(&seg).is_some_and(|d| d.iter().any(|s| older.contains(s)));
                if needed {
                    compact.push(seg);
                } else {
                    self.delete_segment(&mut st, seg);
                }
            }
        }
        for seg in compact {
            match self.compact(seg) {
                Ok(pos) => self.shared.state.lock().unwrap().doomed.push((seg, pos)),
                Err(e) => warn!(segment = seg, error = %e, "cannot compact segment"),
            }
        }
    }

    fn delete_segment(&self, st: &mut WriterState, seg: u32) {
        match fs::remove_file(segment_path(&self.shared.dir, seg)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(segment = seg, error = %e, "cannot delete segment");
                return;
            }
        }
        st.live.remove(&seg);
        st.deps.remove(&seg);
        st.barriers.remove(&seg);
        st.on_disk.retain(|s| *s != seg);
        self.shared.readers.lock().unwrap().remove(&seg);
        if let Some(observe) = self.shared.file_ops.lock().unwrap().as_ref() {
            observe(FileOp::Delete { segment: seg });
        }
    }

    /// Copies the ack and delivered records of `seg` that concern messages
    /// in older segments still on disk to the newest segment. Returns the
    /// position that must be synced before `seg` may be deleted.
    fn compact(&self, seg: u32) -> io::Result<u64> {
        let mut raw = Vec::new();
        File::open(segment_path(&self.shared.dir, seg))?.read_to_end(&mut raw)?;
        let data = Bytes::from(raw);
        let (first_id, on_disk) = {
            let st = self.shared.state.lock().unwrap();
            (st.first_id.clone(), st.on_disk.iter().copied().collect::<Vec<u32>>())
        };
        let by_id: BTreeMap<u64, u32> = first_id.iter().map(|(s, id)| (*id, *s)).collect();
        let segment_of = |id: u64| by_id.range(..=id).next_back().map(|(_, s)| *s);
        let mut copies: Vec<(u8, Vec<u8>, u32)> = Vec::new();
        let mut ignored = Recovered::default();
        Self::scan(&data, seg, &mut ignored, |kind, mut c, _| {
            if kind == T_ACK || kind == T_DELIVERED {
                let payload = c.0.to_vec();
                if let Some(target) = c.u64().and_then(segment_of) {
                    if target < seg && on_disk.contains(&target) {
                        copies.push((kind, payload, target));
                    }
                }
            }
            true
        });
        let n = copies.len();
        let mut pos = self.shared.state.lock().unwrap().appended;
        for (kind, mut payload, target) in copies {
            pos = self.append(kind, &mut payload, true, 0, Some(target)).2;
        }
        info!(segment = seg, records = n, "compacted segment: copied what older segments still need");
        Ok(pos)
    }
}

impl crate::MessageStore for MessageLog {
    /// Closes the log and waits until its flusher is done with the files
    /// (its last garbage collection, and the file ops it reports, included).
    fn close_and_join(&self) {
        crate::MessageStore::close(self);
        if let Some(h) = self.flusher.lock().unwrap().take() {
            let _ = h.join();
        }
    }

    /// Records a persistent message enqueued in `queues` at `published_at`
    /// (ms since the Unix epoch). Returns where it lives and the position
    /// that must be synced before it is confirmed.
    fn publish_parts(
        &self,
        queues: &[&str],
        published_at: u64,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[Bytes],
    ) -> (Persisted, u64) {
        let body_len: usize = body.iter().map(Bytes::len).sum();
        // Written straight into the log's chunk: a persistent message is
        // copied once here, not into a record first and then again.
        let len = 8
            + 8
            + 2
            + queues.iter().map(|q| 2 + q.len()).sum::<usize>()
            + 2
            + exchange.len()
            + 2
            + routing_key.len()
            + 4
            + properties.len()
            + 4
            + body_len;
        let (segment, offset, pos, id) = self.append_with(T_PUBLISH, len, true, queues.len() as u64, None, |p| {
            p.extend_from_slice(&0u64.to_be_bytes()); // msg_id, set by `append_with`
            p.extend_from_slice(&published_at.to_be_bytes());
            p.extend_from_slice(&(queues.len() as u16).to_be_bytes());
            for q in queues {
                put_str16(p, q);
            }
            put_str16(p, exchange);
            put_str16(p, routing_key);
            put_bytes32(p, properties);
            p.extend_from_slice(&(body_len as u32).to_be_bytes());
            for part in body {
                p.extend_from_slice(part);
            }
        });
        let msg_id = id.expect("a publish record has an id");
        (Persisted { msg_id, segment, offset, end: pos }, pos)
    }

    /// Reads a publish record back (a paged-out message). The record must
    /// be written: callers page out only what `synced()` covers.
    fn read(&self, location: u64) -> io::Result<ReadBack> {
        use std::os::unix::fs::FileExt;
        let (segment, offset) = ((location >> 32) as u32, location as u32);
        let bad = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("segment {segment} offset {offset}: {what}"))
        };
        let file = self.reader(segment)?;
        let mut header = [0u8; HEADER + 1];
        file.read_exact_at(&mut header, offset as u64)?;
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || header[HEADER] != T_PUBLISH {
            return Err(bad("not a publish record"));
        }
        let mut body = vec![0u8; 1 + len as usize];
        file.read_exact_at(&mut body, offset as u64 + HEADER as u64)?;
        if crc32fast::hash(&body) != crc {
            return Err(bad("checksum mismatch"));
        }
        let data = Bytes::from(body);
        let mut c = Cursor(&data[1..]);
        let parsed = (|| {
            let msg_id = c.u64()?;
            let published_at = c.u64()?;
            for _ in 0..c.u16()? {
                c.str16()?;
            }
            let (exchange, routing_key) = (c.str16()?.to_owned(), c.str16()?.to_owned());
            let (properties, body) = (c.bytes32()?, c.bytes32()?);
            Some(ReadBack {
                persisted: Persisted { msg_id, segment, offset, end: 0 },
                published_at,
                message: StoredMessage {
                    exchange,
                    routing_key,
                    properties: data.slice_ref(properties),
                    body: data.slice_ref(body),
                },
            })
        })();
        parsed.ok_or_else(|| bad("undecodable publish record"))
    }

    /// The message left `queue` for good (acked, dropped, purged). Lazy.
    fn ack(&self, queue: &str, m: Persisted) {
        let mut p = Vec::with_capacity(10 + queue.len());
        p.extend_from_slice(&m.msg_id.to_be_bytes());
        put_str16(&mut p, queue);
        self.append(T_ACK, &mut p, false, 0, Some(m.segment));
        let mut st = self.shared.state.lock().unwrap();
        if let Some(n) = st.live.get_mut(&m.segment) {
            *n = n.saturating_sub(1);
        }
    }

    fn forget(&self, location: u64) {
        let mut st = self.shared.state.lock().unwrap();
        if let Some(n) = st.live.get_mut(&((location >> 32) as u32)) {
            *n = n.saturating_sub(1);
        }
    }

    /// The message was delivered from `queue` for the `count`-th time. Lazy.
    fn delivered(&self, queue: &str, m: Persisted, count: u32) {
        let mut p = Vec::with_capacity(14 + queue.len());
        p.extend_from_slice(&m.msg_id.to_be_bytes());
        p.extend_from_slice(&count.to_be_bytes());
        put_str16(&mut p, queue);
        self.append(T_DELIVERED, &mut p, false, 0, Some(m.segment));
    }

    /// A durable queue was deleted: none of its messages come back. The
    /// caller also acks each message it held (for segment accounting).
    fn queue_deleted(&self, queue: &str) -> u64 {
        let mut p = Vec::with_capacity(2 + queue.len());
        put_str16(&mut p, queue);
        self.append(T_QUEUE_DELETED, &mut p, true, 0, None).2
    }

    /// Logical position known durable.
    fn synced(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    fn appended(&self) -> u64 {
        self.shared.state.lock().unwrap().appended
    }

    /// Whether the last write or sync failed (disk full, I/O error).
    fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Flushes and syncs everything appended so far, then stops the flusher.
    fn close(&self) {
        let target = self.shared.state.lock().unwrap().appended;
        for _ in 0..500 {
            if self.synced() >= target || self.is_failed() {
                break;
            }
            self.shared.wake.notify_one();
            thread::sleep(std::time::Duration::from_millis(2));
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    fn on_sync(&self, f: Box<dyn Fn(u64) + Send>) {
        *self.shared.on_sync.lock().unwrap() = Some(f);
    }

    /// Reports every later change to the log's files to `observe`, in order
    /// (replication: a replica applies them with [`crate::replica::Replica`]).
    fn on_file_op(&self, observe: FileOpObserver) {
        *self.shared.file_ops.lock().unwrap() = Some(observe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageStore;

    /// A scratch directory, removed when the returned guard is dropped.
    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("warren-log-{name}-")).tempdir().unwrap()
    }

    /// Polls until the log is synced to `pos`. The deadline is generous:
    /// an fsync on a loaded CI machine took more than the second this
    /// allowed before.
    fn wait_synced(log: &MessageLog, pos: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.synced() < pos {
            assert!(std::time::Instant::now() < deadline, "never synced to {pos}");
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn bodies(log: &MessageLog, rec: &Recovered, q: &str) -> Vec<Vec<u8>> {
        let read = |e: &RecoveredEntry| log.read(e.persisted.location()).unwrap().message.body.to_vec();
        rec.queues.get(q).map(|v| v.iter().map(read).collect()).unwrap_or_default()
    }

    #[test]
    fn a_replica_applying_the_file_ops_recovers_the_same_log() {
        let (primary, replica_dir) = (tmp("primary"), tmp("replica"));
        let (dir, replica) = (primary.path().to_path_buf(), replica_dir.path().to_path_buf());
        fs::create_dir_all(&replica).unwrap();
        // Small segments: deletions and compactions happen along the way.
        let (log, _) = MessageLog::open_with(&dir, 4096).unwrap();
        let to = std::sync::Mutex::new(crate::replica::Replica::new(replica.clone()));
        let replica = replica.join(crate::replica::MESSAGES_DIR);
        let deleted = Arc::new(AtomicU64::new(0));
        let seen = deleted.clone();
        log.on_file_op(Box::new(move |op| {
            if matches!(op, FileOp::Delete { .. }) {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            to.lock().unwrap().apply_log_op(op).expect("the replica applies every op in order");
        }));
        let mut kept = Vec::new();
        let mut pos = 0;
        for i in 0..400u32 {
            let body = vec![i as u8; 100 + (i as usize % 7) * 50];
            let (p, at) = log.publish(&["q1", "q2"], i as u64, "ex", "rk", &[0, 0], &body);
            pos = at;
            // A few early ones stay (in q1, and delivered twice in q2); the
            // rest are acked, so later segments empty out and go.
            if i < 50 && i % 10 == 0 {
                kept.push(p);
            } else {
                log.ack("q1", p);
            }
            if i < 60 && i % 6 == 0 {
                log.delivered("q2", p, 2);
            } else {
                log.ack("q2", p);
            }
        }
        wait_synced(&log, pos);
        log.close_and_join();
        assert!(deleted.load(Ordering::Relaxed) > 0, "segments were deleted along the way");
        let files = |d: &Path| {
            let mut v: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        assert_eq!(files(&dir), files(&replica), "the same segment files");
        for f in files(&dir) {
            assert_eq!(fs::read(dir.join(&f)).unwrap(), fs::read(replica.join(&f)).unwrap(), "{f:?}: the same bytes");
        }
        let (a, ra) = MessageLog::open(&dir).unwrap();
        let (b, rb) = MessageLog::open(&replica).unwrap();
        for q in ["q1", "q2"] {
            assert_eq!(bodies(&a, &ra, q), bodies(&b, &rb, q), "{q}");
            let counts = |r: &Recovered| r.queues[q].iter().map(|e| e.delivery_count).collect::<Vec<_>>();
            assert_eq!(counts(&ra), counts(&rb));
        }
        assert_eq!(ra.queues["q1"].len(), kept.len());
        assert_eq!((ra.dropped_records, rb.dropped_records), (0, 0));
        // Their threads are done before the directories go.
        a.close_and_join();
        b.close_and_join();
    }

    #[test]
    fn recovers_unacked_messages_in_order_with_delivery_counts() {
        let scratch = tmp("recover");
        let dir = scratch.path().to_path_buf();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert!(rec.queues.is_empty());
        let (a, _) = log.publish(&["q1", "q2"], 0, "ex", "rk", &[0, 0], b"one");
        let (b, _) = log.publish(&["q1"], 0, "ex", "rk", &[0, 0], b"two");
        let (_, pos) = log.publish(&["q1"], 0, "", "q1", &[0x10, 0, 2], b"three");
        log.ack("q1", a);
        log.delivered("q1", b, 2);
        wait_synced(&log, pos);
        log.close();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert_eq!(bodies(&log, &rec, "q1"), vec![b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(bodies(&log, &rec, "q2"), vec![b"one".to_vec()]);
        assert_eq!(rec.queues["q1"][0].delivery_count, 2);
        assert_eq!(rec.queues["q1"][1].body_len, 5);
        let third = log.read(rec.queues["q1"][1].persisted.location()).unwrap();
        assert_eq!(&third.message.properties[..], &[0x10, 0, 2]);
        assert_eq!(rec.dropped_records, 0);
    }

    #[test]
    fn fanout_body_is_written_once() {
        let scratch = tmp("fanout");
        let dir = scratch.path().to_path_buf();
        let (log, _) = MessageLog::open(&dir).unwrap();
        let queues: Vec<String> = (0..8).map(|i| format!("q{i}")).collect();
        let refs: Vec<&str> = queues.iter().map(|s| s.as_str()).collect();
        let body = vec![7u8; 100_000];
        let (_, pos) = log.publish(&refs, 0, "amq.fanout", "", &[0, 0], &body);
        wait_synced(&log, pos);
        log.close();
        let size: u64 = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(size < 2 * body.len() as u64, "log is {size} bytes for one 100 kB body");
        let (_log, rec) = MessageLog::open(&dir).unwrap();
        assert_eq!(rec.queues.len(), 8);
    }

    #[test]
    fn torn_tail_is_truncated_and_the_rest_kept() {
        let scratch = tmp("torn");
        let dir = scratch.path().to_path_buf();
        let (log, _) = MessageLog::open(&dir).unwrap();
        log.publish(&["q"], 0, "", "q", &[0, 0], b"kept");
        let (_, pos) = log.publish(&["q"], 0, "", "q", &[0, 0], b"torn");
        wait_synced(&log, pos);
        log.close();
        let seg = segment_path(&dir, 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert_eq!(bodies(&log, &rec, "q"), vec![b"kept".to_vec()]);
        assert!(rec.truncated_bytes > 0);
        // New writes go on and survive the next restart.
        let (_, pos) = log.publish(&["q"], 0, "", "q", &[0, 0], b"after");
        wait_synced(&log, pos);
        log.close();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert_eq!(bodies(&log, &rec, "q"), vec![b"kept".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn flipped_byte_drops_one_record_and_keeps_the_others() {
        let scratch = tmp("flip");
        let dir = scratch.path().to_path_buf();
        let (log, _) = MessageLog::open(&dir).unwrap();
        log.publish(&["q"], 0, "", "q", &[0, 0], b"first-message");
        log.publish(&["q"], 0, "", "q", &[0, 0], b"second-message");
        let (_, pos) = log.publish(&["q"], 0, "", "q", &[0, 0], b"third-message");
        wait_synced(&log, pos);
        log.close();
        let seg = segment_path(&dir, 1);
        let mut data = fs::read(&seg).unwrap();
        let at = data.windows(6).position(|w| w == b"second").unwrap();
        data[at] ^= 0xFF;
        fs::write(&seg, &data).unwrap();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert_eq!(bodies(&log, &rec, "q"), vec![b"first-message".to_vec(), b"third-message".to_vec()]);
        assert_eq!(rec.dropped_records, 1);
    }

    #[test]
    fn garbage_segment_does_not_stop_startup() {
        let scratch = tmp("garbage");
        let dir = scratch.path().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        fs::write(segment_path(&dir, 1), b"not a segment at all").unwrap();
        let (log, rec) = MessageLog::open(&dir).unwrap();
        assert!(rec.queues.is_empty());
        let (_, pos) = log.publish(&["q"], 0, "", "q", &[0, 0], b"x");
        wait_synced(&log, pos);
    }

    fn segment_count(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count()
    }

    #[test]
    fn a_long_unacked_message_keeps_only_its_own_segment() {
        let scratch = tmp("compact");
        let dir = scratch.path().to_path_buf();
        let (log, _) = MessageLog::open_with(&dir, 16 << 10).unwrap();
        let (stuck, _) = log.publish(&["slow"], 0, "", "slow", &[0, 0], b"stuck");
        // FIFO traffic: each message acked a little after it was published,
        // so acks land in later segments than their publishes.
        let mut window = std::collections::VecDeque::new();
        let mut pos = 0;
        for i in 0..4000u32 {
            let (m, p) = log.publish(&["fast"], 0, "", "fast", &[0, 0], &[i as u8; 200]);
            pos = p;
            window.push_back(m);
            if window.len() > 50 {
                log.ack("fast", window.pop_front().unwrap());
            }
            if i % 100 == 0 {
                log.delivered("slow", stuck, i / 100 + 1);
            }
        }
        for m in window {
            log.ack("fast", m);
        }
        wait_synced(&log, pos);
        // A few more flushes let compaction copies sync and their segments go.
        for _ in 0..5 {
            let (_, p) = log.publish(&["other"], 0, "", "other", &[0, 0], b"x");
            wait_synced(&log, p);
            thread::sleep(std::time::Duration::from_millis(5));
        }
        let segments = segment_count(&dir);
        assert!(segments <= 6, "{segments} segments remain for one unacked message (~50 written)");
        let (log, rec) = log.reopen().unwrap();
        assert_eq!(bodies(&log, &rec, "slow"), vec![b"stuck".to_vec()]);
        assert_eq!(rec.queues["slow"][0].delivery_count, 40, "the highest delivery count survives compaction");
        assert!(
            !rec.queues.contains_key("fast"),
            "no acked message comes back: {:?}",
            rec.queues.get("fast").map(|v| v.len())
        );
        assert_eq!(rec.queues["other"].len(), 5);
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let scratch = tmp("gc");
        let dir = scratch.path().to_path_buf();
        let (log, _) = MessageLog::open(&dir).unwrap();
        let body = vec![1u8; 1 << 20];
        let mut ids = vec![];
        let mut pos = 0;
        // ~3 segments' worth.
        for _ in 0..(3 * SEGMENT_TARGET / body.len() as u64) {
            let (m, p) = log.publish(&["q"], 0, "", "q", &[0, 0], &body);
            ids.push(m);
            pos = p;
        }
        wait_synced(&log, pos);
        let count = || fs::read_dir(&dir).unwrap().count();
        assert!(count() >= 3);
        for m in ids {
            log.ack("q", m);
        }
        // One more publish forces a flush and a collection pass.
        let (_, p) = log.publish(&["other"], 0, "", "other", &[0, 0], b"x");
        wait_synced(&log, p);
        // Collection runs right after the sync is reported.
        for _ in 0..1000 {
            if count() == 1 {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(count(), 1, "only the current segment remains");
    }
}
