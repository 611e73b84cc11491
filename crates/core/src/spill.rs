//! Spilling transient messages to disk under memory pressure.
//!
//! Durable queues keep their backlog in the message log (`queue.rs`,
//! `Paged`). Transient messages have no record there, so under memory
//! pressure — the broker's RSS above `--memory-paging-ratio` of the memory
//! high watermark, as RabbitMQ's `vm_memory_high_watermark_paging_ratio` —
//! a queue writes the ones beyond its in-memory head here instead, and
//! reads them back, in order, as consumers reach them.
//!
//! The spill files are scratch space: appended without fsync, never
//! recovered (the directory is emptied when the broker starts: transient
//! stays transient), and a segment file is deleted as soon as every record
//! in it has been read back or dropped.
//!
//! Record: `len:u32` (of the rest), `priority:u8`, `expires_at:u64`
//! (`u64::MAX` = none), `delivery_count:u32`, then exchange, routing key
//! (each `len:u16` + bytes), properties (`len:u32` + bytes) and the body.
//! A location is `segment << 32 | offset`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use warren_store::Meta;

use crate::message::{Message, MessageRef, Props};

/// A segment file is closed for writing past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// A broker's spilling: whether memory is short, and its spill store once
/// it has opened one (a broker without a data directory never spills).
/// Every queue of the broker holds it.
#[derive(Default)]
pub struct Spill {
    /// Set while the broker's memory is above the paging threshold.
    pressure: AtomicBool,
    store: OnceLock<Arc<SpillStore>>,
}

impl Spill {
    /// Raised and cleared by the node's memory monitor.
    pub fn set_pressure(&self, on: bool) {
        self.pressure.store(on, Ordering::Relaxed);
    }

    /// The spill store to write to now: there is one and memory is short.
    pub fn when_pressed(&self) -> Option<&Arc<SpillStore>> {
        if self.pressure.load(Ordering::Relaxed) {
            self.store.get()
        } else {
            None
        }
    }

    /// The store, whether or not memory is short (reading back, dropping).
    pub fn store(&self) -> Option<&Arc<SpillStore>> {
        self.store.get()
    }

    /// Opens `dir` as the spill store, removing what an earlier run left
    /// there.
    pub fn open(&self, dir: &Path) -> io::Result<()> {
        let store = SpillStore::open(dir)?;
        let _ = self.store.set(Arc::new(store));
        Ok(())
    }
}

struct Segment {
    file: Arc<File>,
    /// Records written and not yet read back or dropped.
    live: u64,
}

struct Inner {
    segments: BTreeMap<u32, Segment>,
    /// The segment appended to, and how far.
    current: u32,
    current_len: u64,
}

pub struct SpillStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Body and header bytes in live records (the memory breakdown).
    bytes: AtomicU64,
}

impl SpillStore {
    fn open(dir: &Path) -> io::Result<SpillStore> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        let store = SpillStore {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner { segments: BTreeMap::new(), current: 0, current_len: 0 }),
            bytes: AtomicU64::new(0),
        };
        Ok(store)
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n:08}.spill"))
    }

    /// Bytes of live records on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Segment files now on disk.
    pub fn files(&self) -> usize {
        self.inner.lock().segments.len()
    }

    /// Writes a message out; returns its location.
    pub fn append(&self, m: &Message, meta: &Meta) -> io::Result<u64> {
        let mut rec =
            Vec::with_capacity(32 + m.exchange().len() + m.routing_key().len() + m.properties_raw.len() + m.body.len());
        rec.extend_from_slice(&[0; 4]);
        rec.push(meta.priority);
        rec.extend_from_slice(&meta.expires_at.unwrap_or(u64::MAX).to_be_bytes());
        rec.extend_from_slice(&meta.delivery_count.to_be_bytes());
        for s in [m.exchange().as_bytes(), m.routing_key().as_bytes()] {
            rec.extend_from_slice(&(s.len() as u16).to_be_bytes());
            rec.extend_from_slice(s);
        }
        rec.extend_from_slice(&(m.properties_raw.len() as u32).to_be_bytes());
        rec.extend_from_slice(&m.properties_raw);
        for part in m.body.parts() {
            rec.extend_from_slice(part);
        }
        let len = (rec.len() - 4) as u32;
        rec[..4].copy_from_slice(&len.to_be_bytes());

        let mut inner = self.inner.lock();
        if inner.segments.is_empty() || inner.current_len + rec.len() as u64 > SEGMENT_BYTES {
            let n = if inner.segments.is_empty() && inner.current_len == 0 { inner.current } else { inner.current + 1 };
            let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(self.path(n))?;
            // The segment being left goes once nothing in it is live.
            let old = inner.current;
            if old != n && inner.segments.get(&old).is_some_and(|s| s.live == 0) {
                inner.segments.remove(&old);
                let _ = fs::remove_file(self.path(old));
            }
            inner.segments.insert(n, Segment { file: Arc::new(file), live: 0 });
            inner.current = n;
            inner.current_len = 0;
        }
        let n = inner.current;
        let offset = inner.current_len;
        let seg = inner.segments.get_mut(&n).expect("the current segment is open");
        (&*seg.file).write_all(&rec)?;
        seg.live += 1;
        inner.current_len += rec.len() as u64;
        self.bytes.fetch_add(rec.len() as u64, Ordering::Relaxed);
        Ok((n as u64) << 32 | offset)
    }

    /// Reads a message back and lets go of its record.
    pub fn take(&self, location: u64) -> io::Result<(MessageRef, Meta)> {
        let (n, offset) = ((location >> 32) as u32, location & 0xffff_ffff);
        let file = self.inner.lock().segments.get(&n).map(|s| s.file.clone());
        let file = file.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "spill segment is gone"))?;
        let mut len = [0; 4];
        file.read_exact_at(&mut len, offset)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut rec = vec![0; len];
        file.read_exact_at(&mut rec, offset + 4)?;
        self.release(location, len as u64 + 4);
        decode(Bytes::from(rec)).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad spill record"))
    }

    /// Drops a record without reading it (purge, queue deletion).
    pub fn forget(&self, location: u64) {
        let (n, offset) = ((location >> 32) as u32, location & 0xffff_ffff);
        let file = self.inner.lock().segments.get(&n).map(|s| s.file.clone());
        let mut len = [0; 4];
        let rec_len = match file.map(|f| f.read_exact_at(&mut len, offset)) {
            Some(Ok(())) => u32::from_be_bytes(len) as u64 + 4,
            _ => 0,
        };
        self.release(location, rec_len);
    }

    fn release(&self, location: u64, rec_len: u64) {
        let n = (location >> 32) as u32;
        self.bytes.fetch_sub(rec_len.min(self.bytes()), Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let current = inner.current;
        let Some(seg) = inner.segments.get_mut(&n) else { return };
        seg.live = seg.live.saturating_sub(1);
        if seg.live == 0 {
            if n != current {
                inner.segments.remove(&n);
                let _ = fs::remove_file(self.path(n));
            } else {
                // Everything written so far is gone: start the file over.
                inner.segments.remove(&n);
                let _ = fs::remove_file(self.path(n));
                inner.current_len = 0;
            }
        }
    }
}

fn decode(rec: Bytes) -> Option<(MessageRef, Meta)> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<Bytes> {
        rec.get(at..at + n)?;
        let out = rec.slice(at..at + n);
        at += n;
        Some(out)
    };
    let priority = take(1)?[0];
    let expires_at = u64::from_be_bytes(take(8)?[..].try_into().ok()?);
    let delivery_count = u32::from_be_bytes(take(4)?[..].try_into().ok()?);
    let mut short = || -> Option<String> {
        let n = u16::from_be_bytes(take(2)?[..].try_into().ok()?) as usize;
        String::from_utf8(take(n)?.to_vec()).ok()
    };
    let exchange = short()?;
    let routing_key = short()?;
    let props_len = u32::from_be_bytes(take(4)?[..].try_into().ok()?) as usize;
    let properties = take(props_len)?;
    let body = rec.slice(at..);
    let props = warren_protocol::content::scan_properties(&properties).map(Props::from).unwrap_or_default();
    let m = Message::with_props(exchange.into(), routing_key.into(), properties, props, body.into());
    let meta = Meta { priority, expires_at: (expires_at != u64::MAX).then_some(expires_at), delivery_count };
    Some((Arc::new(m), meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32, size: usize) -> Message {
        let body = Bytes::from([i.to_be_bytes().to_vec(), vec![7; size]].concat());
        Message::with_props(
            "x".into(),
            format!("k{i}").into(),
            Bytes::from_static(&[0, 0]),
            Props::default(),
            body.into(),
        )
    }

    #[test]
    fn records_come_back_and_segments_go() {
        let dir = std::env::temp_dir().join(format!("warren-spill-test-{}", std::process::id()));
        let store = SpillStore::open(&dir).unwrap();
        let meta = |i: u32| Meta {
            priority: (i % 3) as u8,
            expires_at: i.is_multiple_of(2).then_some(i as u64),
            delivery_count: i,
        };
        // 3 segments' worth of 1 MiB bodies.
        let locations: Vec<u64> = (0..150).map(|i| store.append(&msg(i, 1 << 20), &meta(i)).unwrap()).collect();
        assert!(store.files() >= 3);
        assert!(store.bytes() > 150 << 20);
        for (i, &at) in locations.iter().enumerate().take(100) {
            let i = i as u32;
            let (m, got) = store.take(at).unwrap();
            assert_eq!(&m.body.contiguous()[..4], &i.to_be_bytes());
            assert_eq!(m.body.len(), 4 + (1 << 20));
            assert_eq!(m.routing_key(), format!("k{i}"));
            assert_eq!(got, meta(i));
        }
        for &at in &locations[100..] {
            store.forget(at);
        }
        assert_eq!(store.bytes(), 0);
        assert_eq!(store.files(), 0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "segment files left behind");
        // And it starts over.
        let at = store.append(&msg(9, 10), &meta(9)).unwrap();
        assert_eq!(store.take(at).unwrap().1, meta(9));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
