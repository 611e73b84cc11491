//! The log's writer thread: it takes what publishers appended, writes it
//! to the current segment in batches, syncs (one `fdatasync` for every
//! publisher that wrote since the last one: group commit), reports the
//! synced position and the file operations, and collects garbage.

use super::*;

/// Opens a segment to append to; a new one gets its header (reported).
pub(super) fn open_segment(dir: &Path, seg: u32, ops: &mut Vec<Written>) -> io::Result<File> {
    let mut f = OpenOptions::new().create(true).append(true).open(segment_path(dir, seg))?;
    if f.metadata()?.len() == 0 {
        f.write_all(SEGMENT_MAGIC)?;
        ops.push(Written { segment: seg, offset: 0, chunk: None });
    }
    Ok(f)
}

/// Writes and syncs one batch. On error every file is cut back to its
/// length before the batch, so no torn record is left in the middle.
/// What a batch wrote where: a chunk (by index), or a new segment's header.
pub(super) struct Written {
    segment: u32,
    offset: u64,
    chunk: Option<usize>,
}

/// `ops` gets what was written, in order; `written` sees it once every
/// chunk is written, before the last sync (replicas sync alongside it).
pub(super) fn write_batch(
    dir: &Path,
    file: &mut Option<(u32, File)>,
    chunks: &[Chunk],
    ops: &mut Vec<Written>,
    written: impl FnOnce(&[Written]),
) -> io::Result<()> {
    let mut undo: Vec<(u32, u64)> = Vec::new();
    let result = (|| {
        for (i, c) in chunks.iter().enumerate() {
            if file.as_ref().is_none_or(|(s, _)| *s != c.segment) {
                if let Some((_, f)) = file.take() {
                    f.sync_data()?;
                }
                *file = Some((c.segment, open_segment(dir, c.segment, ops)?));
            }
            let (_, f) = file.as_mut().expect("opened above");
            let at = f.metadata()?.len();
            undo.push((c.segment, at));
            f.write_all(&c.bytes)?;
            ops.push(Written { segment: c.segment, offset: at, chunk: Some(i) });
        }
        written(ops);
        if chunks.iter().any(|c| c.durable) {
            if let Some((_, f)) = file.as_ref() {
                f.sync_data()?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        *file = None;
        for (seg, len) in undo {
            if let Ok(f) = OpenOptions::new().write(true).open(segment_path(dir, seg)) {
                let _ = f.set_len(len);
            }
        }
    }
    result
}

pub(super) fn flush_loop(shared: Arc<Shared>) {
    let log = MessageLog { shared: shared.clone(), flusher: Default::default() };
    // The segment being appended to.
    let mut file: Option<(u32, File)> = None;
    loop {
        let (chunks, pos) = {
            let mut st = shared.state.lock().unwrap();
            while st.chunks.is_empty() && !shared.shutdown.load(Ordering::Acquire) {
                st = shared.wake.wait(st).unwrap();
            }
            if st.chunks.is_empty() {
                return;
            }
            (std::mem::take(&mut st.chunks), st.appended)
        };
        let size: u64 = chunks.iter().map(|c| c.bytes.len() as u64).sum();
        let injected = shared.write_limit.is_some_and(|l| shared.written.load(Ordering::Acquire) + size > l);
        let mut ops = Vec::new();
        let result = if injected {
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (injected fault)"))
        } else {
            // Replication: the followers get the batch, and a mark to sync
            // it, before this node's own sync, so that the syncs overlap.
            // (Should that sync fail, the files are cut back and the batch
            // written again at the same offsets, with the same bytes.)
            let report = |ops: &[Written]| {
                if let Some(observe) = shared.file_ops.lock().unwrap().as_ref() {
                    for w in ops {
                        let bytes: &[u8] = w.chunk.map_or(&SEGMENT_MAGIC[..], |i| &chunks[i].bytes[..]);
                        observe(FileOp::Append { segment: w.segment, offset: w.offset, bytes });
                    }
                    observe(FileOp::Written { pos });
                }
            };
            write_batch(&shared.dir, &mut file, &chunks, &mut ops, report)
        };
        if result.is_ok() {
            shared.written.fetch_add(size, Ordering::AcqRel);
        }
        match result {
            Ok(()) => {
                if shared.failed.swap(false, Ordering::AcqRel) {
                    info!("message log writes succeed again");
                }
                shared.synced.store(pos, Ordering::Release);
                if let Some(cb) = shared.on_sync.lock().unwrap().as_ref() {
                    cb(pos);
                }
                log.collect_garbage();
            }
            Err(e) => {
                // Nothing past the last sync is confirmed; retry the batch.
                if !shared.failed.swap(true, Ordering::AcqRel) {
                    error!(error = %e, "message log write failed; confirms wait until it succeeds (retrying)");
                }
                {
                    let mut st = shared.state.lock().unwrap();
                    let newer = std::mem::take(&mut st.chunks);
                    st.chunks = chunks;
                    st.chunks.extend(newer);
                }
                if let Some(cb) = shared.on_sync.lock().unwrap().as_ref() {
                    cb(shared.synced.load(Ordering::Acquire));
                }
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
