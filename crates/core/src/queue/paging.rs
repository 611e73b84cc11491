//! Disk-first paging of a queue's ready messages: beyond a hot head kept
//! in memory, a queue keeps only each message's 8-byte location (in the
//! message log, or in the spill store under memory pressure) and reads
//! bodies back as the head drains (`docs/storage.md`, "Paging").

use super::*;

/// Disk-first: a durable queue keeps at most this many ready messages (or
/// body bytes) in memory; newer ones live only in the message log and are
/// read back as the head drains (`docs/storage.md`, "Paging").
pub(super) const HOT_COUNT: usize = 4096;
pub(super) const HOT_BYTES: u64 = 8 << 20;
/// How much one refill of the head reads back.
pub(super) const PAGE_IN_COUNT: usize = 1024;
pub(super) const PAGE_IN_BYTES: u64 = 4 << 20;

/// One paged tail per priority level (one for a plain queue).
pub(super) fn paged_tails(
    levels: usize,
    log: Option<Arc<dyn MessageStore>>,
    spill: &Arc<crate::spill::Spill>,
    message_ttl: Option<u64>,
) -> Vec<Paged> {
    (0..levels)
        .map(|_| Paged {
            log: log.clone(),
            spill: spill.clone(),
            message_ttl,
            order: VecDeque::new(),
            base: 0,
            pinned: FxHashMap::default(),
            unsynced: VecDeque::new(),
            bytes: 0,
        })
        .collect()
}

/// In `Paged::order`: the message at this place is held in memory.
pub(super) const PINNED: u64 = 1 << 63;
/// In `Paged::order`: the message is in the spill store at the location in
/// the lower bits (a transient message written out under memory pressure).
pub(super) const SPILLED: u64 = 1 << 62;

/// The paged-out tail of a queue: 8 bytes per message (its record's
/// location in the message log, or in the spill store), behind everything
/// in `ready`. A message the log cannot give back — transient, redelivered,
/// or not yet synced — keeps its place here but stays in memory (`pinned`),
/// unless memory is short and it is transient: then it is spilled
/// (`spill.rs`). One waiting for the sync is let go once the log has it.
/// Queues without a log (non-durable) use this tail only to spill.
pub(super) struct Paged {
    pub(super) log: Option<Arc<dyn MessageStore>>,
    /// The broker's spilling (transient messages under memory pressure).
    pub(super) spill: Arc<crate::spill::Spill>,
    pub(super) message_ttl: Option<u64>,
    pub(super) order: VecDeque<u64>,
    /// Index (since the queue began) of `order[0]`.
    pub(super) base: u64,
    pub(super) pinned: FxHashMap<u64, (MessageRef, Meta)>,
    /// Pinned persistent messages by index, with the log position that must
    /// be synced before they can go.
    pub(super) unsynced: VecDeque<(u64, u64)>,
    /// Sum of the paged messages' body sizes (`x-max-length-bytes`).
    pub(super) bytes: u64,
}

impl Paged {
    pub(super) fn push(&mut self, message: MessageRef, meta: Meta) {
        self.bytes += message.body.len() as u64;
        let idx = self.base + self.order.len() as u64;
        match (&self.log, message.persisted.get()) {
            (Some(log), Some(p)) if meta.delivery_count == 0 => {
                if p.end <= log.synced() {
                    self.order.push_back(p.location());
                    return;
                }
                self.unsynced.push_back((idx, p.end));
            }
            (_, None) => {
                if let Some(spill) = self.spill.when_pressed() {
                    match spill.append(&message, &meta) {
                        Ok(location) => {
                            self.order.push_back(SPILLED | location);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot spill a message to disk; keeping it in memory"),
                    }
                }
            }
            _ => {}
        }
        self.order.push_back(PINNED);
        self.pinned.insert(idx, (message, meta));
    }

    /// A message that is in the log only (recovery).
    pub(super) fn push_location(&mut self, location: u64, body_len: u32) {
        self.bytes += body_len as u64;
        self.order.push_back(location);
    }

    /// Lets go of pinned messages that the log now has on disk.
    pub(super) fn settle(&mut self) {
        let Some(log) = self.log.as_ref().filter(|_| !self.unsynced.is_empty()) else { return };
        let synced = log.synced();
        while let Some(&(idx, end)) = self.unsynced.front() {
            if end > synced {
                break;
            }
            self.unsynced.pop_front();
            if let Some((m, _)) = self.pinned.remove(&idx) {
                let location = m.persisted.get().expect("persisted").location();
                self.order[(idx - self.base) as usize] = location;
            }
        }
    }

    /// Takes the oldest paged message back into memory.
    pub(super) fn pop(&mut self) -> Option<Option<(MessageRef, Meta)>> {
        let v = self.order.pop_front()?;
        let idx = self.base;
        self.base += 1;
        if self.order.is_empty() {
            self.bytes = 0;
            if self.order.capacity() > HOT_COUNT {
                // A drained backlog gives its memory back.
                self.order = VecDeque::new();
                self.pinned.shrink_to_fit();
            }
        }
        if v == PINNED {
            let (m, meta) = self.pinned.remove(&idx).expect("a pinned message at a pinned place");
            self.bytes = self.bytes.saturating_sub(m.body.len() as u64);
            return Some(Some((m, meta)));
        }
        if v & SPILLED != 0 {
            let back = self.spill.store().map(|s| s.take(v & !SPILLED));
            return match back {
                Some(Ok((m, meta))) => {
                    self.bytes = self.bytes.saturating_sub(m.body.len() as u64);
                    Some(Some((m, meta)))
                }
                Some(Err(e)) => {
                    tracing::error!(location = v & !SPILLED, error = %e, "cannot read a spilled message back; dropping it");
                    Some(None)
                }
                None => Some(None),
            };
        }
        let Some(log) = &self.log else { return Some(None) };
        match log.read(v) {
            Ok(back) => {
                let m = Arc::new(Message::from_stored(&back.message, back.persisted));
                self.bytes = self.bytes.saturating_sub(m.body.len() as u64);
                let ttl = effective_ttl(self.message_ttl, &m);
                let meta = Meta {
                    priority: 0,
                    expires_at: ttl.map(|t| back.published_at.saturating_add(t)),
                    delivery_count: 0,
                };
                Some(Some((m, meta)))
            }
            Err(e) => {
                tracing::error!(location = v, error = %e, "cannot read a paged-out message back; dropping it");
                Some(None)
            }
        }
    }
}

impl QueueState {
    /// Refills the head from the paged-out tail when the next message to
    /// go (highest priority level with any) is only on disk.
    pub(super) fn page_in(&mut self) {
        let Some(level) =
            (0..self.paged.len()).rev().find(|&l| self.ready.level_len(l as u8) > 0 || !self.paged[l].order.is_empty())
        else {
            return;
        };
        if self.ready.level_len(level as u8) > 0 {
            return;
        }
        let paged = &mut self.paged[level];
        paged.settle();
        let (mut n, mut bytes) = (0, 0);
        while n < PAGE_IN_COUNT && bytes < PAGE_IN_BYTES {
            let Some(next) = paged.pop() else { break };
            if let Some((m, mut meta)) = next {
                meta.priority = level as u8;
                self.may_expire |= meta.expires_at.is_some();
                bytes += m.body.len() as u64;
                self.ready_bytes += m.body.len() as u64;
                self.ready.push(m, meta);
                n += 1;
            }
        }
    }
}
