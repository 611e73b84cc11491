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
//!
//! The same listener takes the client connections a follower passes on to
//! the leader: a `CLIENT` frame, then the client's bytes both ways. Both
//! kinds of link start by naming the cluster and the connecting node; with
//! cluster TLS ([`crate::tls`]) they are inside mutual TLS and the node's
//! certificate must name it. Nothing longer than `MAX_FIRST` is read from
//! a peer before it is known, nor longer than an `ACK` after.

mod follower;
mod leader;

pub use follower::follow;
pub use leader::{serve, Hub};

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use warren_node::cluster::BoxStream;
use warren_store::log::FileOp;

use super::{Cluster, Error, Result, Role};

/// The parts of the data directory that are replicated (the spill store,
/// the lock and the ctl socket are each node's own).
pub const REPLICATED: [&str; 2] = ["messages", "definitions"];

/// Follower → leader: cluster name (str16), node name (str16), then what
/// it holds: for each file, path (str16), size (u64), SHA-256 (32 octets).
const HELLO: u8 = 1;
/// Follower → leader: the last `SYNC` mark applied and fsync'd: a log
/// position (u64) and a count of definitions saves (u64).
const ACK: u8 = 2;
/// Follower → leader: cluster name (str16), node name (str16), protocol
/// (u8: `Protocol`), the client's address (str16); then the client's bytes.
const CLIENT: u8 = 3;
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

/// The largest first frame (a hello, or a client's) read from a peer not
/// yet known to be a member: a hello lists each replicated file in about
/// 60 octets.
const MAX_FIRST: usize = 4 << 20;
/// The largest frame read from a follower after its hello (an `ACK`).
const MAX_ACK: usize = 64;

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

/// The first frame of a client connection passed on to the leader.
pub fn client_frame(
    cluster: &str,
    node: &str,
    protocol: warren_node::cluster::Protocol,
    client: std::net::SocketAddr,
) -> Vec<u8> {
    frame(CLIENT, |b| {
        put_str(b, cluster);
        put_str(b, node);
        b.push(protocol as u8);
        put_str(b, &client.to_string());
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
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Protocol("truncated replication frame".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 octets")))
    }
    fn str(&mut self) -> Result<&'a str> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().expect("2 octets")) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Error::Protocol("replication frame: bad path".into()))
    }
}

/// The next whole frame in `buf` from `at`: its kind and payload range.
fn next_frame(buf: &[u8], at: usize) -> Result<Option<(u8, std::ops::Range<usize>)>> {
    let Some(head) = buf.get(at..at + 5) else { return Ok(None) };
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 octets")) as usize;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!("replication frame of {len} octets")));
    }
    if buf.len() < at + 5 + len {
        return Ok(None);
    }
    Ok(Some((head[0], at + 5..at + 5 + len)))
}

/// A replicated file's path, relative to the data directory, checked: one
/// of [`REPLICATED`], then a plain file name.
fn checked(path: &str) -> Result<&str> {
    let ok = path.split_once('/').is_some_and(|(dir, name)| {
        REPLICATED.contains(&dir)
            && !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    match ok {
        true => Ok(path),
        false => Err(Error::Protocol(format!("replication frame names a file outside the data directory: {path:?}"))),
    }
}

/// What a follower holds: path → (size, SHA-256 of the content).
type Held = HashMap<String, (u64, [u8; 32])>;

/// Writes to a follower. One that does not take the bytes within
/// `FOLLOWER_TIMEOUT` (paused, or its link stalled) ends its session, which
/// takes it out of the ISR: it must not hold confirms.
async fn send(wr: &mut Wr, bytes: &[u8]) -> Result<()> {
    match tokio::time::timeout(FOLLOWER_TIMEOUT, wr.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Peer("the follower does not read".into())),
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

/// The two halves of a link to a follower.
type Rd = tokio::io::ReadHalf<BoxStream>;
type Wr = tokio::io::WriteHalf<BoxStream>;

/// Reads one frame of at most `max` octets (checked before allocating).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, max: usize) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 octets")) as usize;
    if len > max {
        return Err(Error::Protocol(format!("frame of {len} octets from a follower")));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

// ---------------------------------------------------------------- follower

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
