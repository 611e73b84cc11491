//! The connection's byte plumbing: the writer task (vectored writes of
//! queued chunks), big frames read in place, and a cluster leader's
//! output held until its delivery records are on the followers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};
use warren_protocol::frame;

use super::{Conn, OUT_HIGH_WATER};

/// A frame this big is read in place (see the read loop), not moved.
pub(super) const BIG_FRAME: usize = 16 * 1024;

/// The bytes still missing of a big frame at the front of `rbuf`.
pub(super) fn big_frame_missing(rbuf: &[u8]) -> Option<usize> {
    let size = u32::from_be_bytes(rbuf.get(3..7)?.try_into().ok()?) as usize;
    let whole = size.checked_add(frame::FRAME_OVERHEAD)?;
    (size >= BIG_FRAME && whole > rbuf.len()).then(|| whole - rbuf.len())
}

/// Slices per vectored write (a kernel takes up to 1024).
pub(super) const MAX_IOV: usize = 64;

/// Where the writer task sends bytes. Plain TCP also lets the connection
/// task write directly while the writer is idle (`try_write`, no hand-off);
/// TLS always goes through the writer task.
pub(super) enum Writer {
    Tcp(Arc<OwnedWriteHalf>),
    Other(Box<dyn AsyncWrite + Unpin + Send>),
}

/// A cluster leader's output held for delivery records (see `held` in
/// `serve`): the last turn's output joins the held batches when it
/// delivered logged messages or when batches wait before it; batches whose
/// records are on the followers (`synced`) go back to `c.out`, in order.
pub(super) fn hold_deliveries(c: &mut Conn, held: &mut VecDeque<(u64, Vec<Bytes>)>, synced: u64) {
    if std::mem::take(&mut c.delivered_logged) {
        let pos = c.shared.broker.log().map_or(0, |l| l.appended());
        if held.back().is_none_or(|(p, _)| *p != pos) {
            held.push_back((pos, Vec::new()));
        }
    }
    let Some((_, batch)) = held.back_mut() else {
        return;
    };
    c.out.take_chunks(|b| batch.push(b));
    while held.front().is_some_and(|(pos, _)| *pos <= synced) {
        for b in held.pop_front().map(|(_, b)| b).unwrap_or_default() {
            c.out.push_shared(b);
        }
    }
}

/// Writes what the connection task could not write without blocking.
pub(super) async fn write_loop(
    mut wr: Writer,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    // Plain TCP: what is queued goes out in vectored writes of up to
    // MAX_IOV chunks (big bodies arrive as chunks of their own).
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(chunk) = rx.recv().await {
        let mut total = chunk.len();
        match &mut wr {
            Writer::Tcp(wr) => {
                batch.push(chunk);
                while batch.len() < MAX_IOV {
                    match rx.try_recv() {
                        Ok(c) => {
                            total += c.len();
                            batch.push(c);
                        }
                        Err(_) => break,
                    }
                }
                batch.retain(|c| !c.is_empty());
                // Next byte to write: batch[done][off..].
                let (mut done, mut off) = (0, 0);
                while done < batch.len() {
                    if wr.writable().await.is_err() {
                        return;
                    }
                    let mut slices = [std::io::IoSlice::new(&[]); MAX_IOV];
                    let mut n = 0;
                    for (i, c) in batch[done..].iter().enumerate() {
                        slices[i] = std::io::IoSlice::new(if i == 0 { &c[off..] } else { c });
                        n += 1;
                    }
                    match wr.try_write_vectored(&slices[..n]) {
                        Ok(mut k) => {
                            while k > 0 && done < batch.len() {
                                let rest = batch[done].len() - off;
                                if k >= rest {
                                    k -= rest;
                                    done += 1;
                                    off = 0;
                                } else {
                                    off += k;
                                    k = 0;
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                batch.clear();
            }
            Writer::Other(w) => {
                // Flush only when nothing else is queued: TLS records carry many frames.
                if w.write_all(&chunk).await.is_err() || (rx.is_empty() && w.flush().await.is_err()) {
                    return;
                }
            }
        }
        let left = pending.fetch_sub(total, Ordering::AcqRel) - total;
        if left <= OUT_HIGH_WATER {
            drained.notify_one();
        }
    }
    if let Writer::Other(w) = &mut wr {
        // TLS: close_notify, so the client sees a clean end of stream.
        let _ = w.shutdown().await;
    }
}
