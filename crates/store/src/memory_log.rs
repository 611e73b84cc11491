//! [`MemoryMessageStore`]: the message store's semantics with nothing on
//! disk. It keeps the records in memory and replays them on
//! [`MemoryMessageStore::reopen`] with its own, deliberately simple replay,
//! so it also serves as the model the on-disk log is checked against.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::log::{Persisted, ReadBack, Recovered, RecoveredEntry, StoredMessage};
use crate::MessageStore;

#[derive(Debug, Clone)]
enum Record {
    Publish { msg_id: u64, published_at: u64, queues: Vec<String>, message: Arc<StoredMessage> },
    Ack { msg_id: u64, queue: String },
    Delivered { msg_id: u64, queue: String, count: u32 },
    QueueDeleted { queue: String },
}

/// During replay: (published_at, message, queue → delivery count).
type Live = (u64, Arc<StoredMessage>, Vec<(String, u32)>);

/// A published message as `read` gives it back: (published_at, content).
type Published = (u64, Arc<StoredMessage>);

/// The model has no segments: a message's location is its id.
fn persisted(msg_id: u64) -> Persisted {
    Persisted { msg_id, segment: (msg_id >> 32) as u32, offset: msg_id as u32, end: 0 }
}

/// Message store kept in memory.
#[derive(Clone, Default)]
pub struct MemoryMessageStore {
    records: Arc<Mutex<Vec<Record>>>,
    /// Published messages by id (what `read` gives back).
    messages: Arc<Mutex<BTreeMap<u64, Published>>>,
    next_msg_id: Arc<AtomicU64>,
}

impl MemoryMessageStore {
    pub fn new() -> Self {
        MemoryMessageStore {
            records: Default::default(),
            messages: Default::default(),
            next_msg_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// What a restart would find: replays the records.
    pub fn reopen(&self) -> (MemoryMessageStore, Recovered) {
        let records = self.records.lock().unwrap().clone();
        let mut live: BTreeMap<u64, Live> = BTreeMap::new();
        for r in &records {
            match r {
                Record::Publish { msg_id, published_at, queues, message } => {
                    live.insert(
                        *msg_id,
                        (*published_at, message.clone(), queues.iter().map(|q| (q.clone(), 0)).collect()),
                    );
                }
                Record::Ack { msg_id, queue } => {
                    if let Some((_, _, qs)) = live.get_mut(msg_id) {
                        qs.retain(|(q, _)| q != queue);
                    }
                }
                Record::Delivered { msg_id, queue, count } => {
                    if let Some((_, _, qs)) = live.get_mut(msg_id) {
                        if let Some(e) = qs.iter_mut().find(|(q, _)| q == queue) {
                            e.1 = e.1.max(*count);
                        }
                    }
                }
                Record::QueueDeleted { queue } => {
                    for (_, _, qs) in live.values_mut() {
                        qs.retain(|(q, _)| q != queue);
                    }
                }
            }
        }
        let mut rec = Recovered::default();
        for (msg_id, (published_at, message, qs)) in live {
            for (q, count) in qs {
                rec.queues.entry(q).or_default().push(RecoveredEntry {
                    persisted: persisted(msg_id),
                    published_at,
                    body_len: message.body.len() as u32,
                    delivery_count: count,
                });
            }
        }
        (self.clone(), rec)
    }
}

impl MessageStore for MemoryMessageStore {
    fn publish_parts(
        &self,
        queues: &[&str],
        published_at: u64,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[Bytes],
    ) -> (Persisted, u64) {
        let mut records = self.records.lock().unwrap();
        let msg_id = self.next_msg_id.fetch_add(1, Ordering::SeqCst);
        let message = Arc::new(StoredMessage {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties: Bytes::copy_from_slice(properties),
            body: Bytes::from(body.concat()),
        });
        self.messages.lock().unwrap().insert(msg_id, (published_at, message.clone()));
        records.push(Record::Publish {
            msg_id,
            published_at,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            message,
        });
        (persisted(msg_id), 0)
    }

    fn read(&self, location: u64) -> std::io::Result<ReadBack> {
        let messages = self.messages.lock().unwrap();
        let (published_at, message) = messages
            .get(&location)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no message {location}")))?;
        Ok(ReadBack { persisted: persisted(location), published_at: *published_at, message: (**message).clone() })
    }

    /// The model keeps no segment accounting.
    fn forget(&self, _location: u64) {}

    fn ack(&self, queue: &str, m: Persisted) {
        self.records.lock().unwrap().push(Record::Ack { msg_id: m.msg_id, queue: queue.to_owned() });
    }

    fn delivered(&self, queue: &str, m: Persisted, count: u32) {
        self.records.lock().unwrap().push(Record::Delivered { msg_id: m.msg_id, queue: queue.to_owned(), count });
    }

    fn queue_deleted(&self, queue: &str) -> u64 {
        self.records.lock().unwrap().push(Record::QueueDeleted { queue: queue.to_owned() });
        0
    }

    fn synced(&self) -> u64 {
        u64::MAX
    }

    fn on_sync(&self, _f: Box<dyn Fn(u64) + Send>) {}

    fn close(&self) {}

    fn is_failed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    //! The conformance suite: every scenario runs against both stores, and a
    //! randomized run checks the on-disk log against the in-memory model
    //! across many restarts.
    use super::*;
    use crate::log::MessageLog;

    /// A store that can be restarted.
    trait Harness {
        fn store(&self) -> &dyn MessageStore;
        fn restart(&mut self) -> Recovered;
    }

    struct Mem(MemoryMessageStore);
    impl Harness for Mem {
        fn store(&self) -> &dyn MessageStore {
            &self.0
        }
        fn restart(&mut self) -> Recovered {
            let (s, r) = self.0.reopen();
            self.0 = s;
            r
        }
    }

    /// The log, and its directory: removed once the log is closed.
    struct Disk(Option<MessageLog>, std::path::PathBuf);
    impl Drop for Disk {
        fn drop(&mut self) {
            drop(self.0.take());
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    impl Disk {
        fn new(name: &str) -> Disk {
            let dir = std::env::temp_dir().join(format!("warren-conf-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            // Small segments: deletion and compaction happen all the time.
            Disk(Some(MessageLog::open_with(&dir, 2048).unwrap().0), dir)
        }
    }
    impl Harness for Disk {
        fn store(&self) -> &dyn MessageStore {
            self.0.as_ref().unwrap()
        }
        fn restart(&mut self) -> Recovered {
            let (s, r) = self.0.take().unwrap().reopen().unwrap();
            self.0 = Some(s);
            r
        }
    }

    /// queue → [(body, delivery count)], comparable across stores; bodies
    /// are read back by location, as queues page them in.
    fn view(s: &dyn MessageStore, r: &Recovered) -> BTreeMap<String, Vec<(Vec<u8>, u32)>> {
        let body = |e: &RecoveredEntry| {
            let b = s.read(e.persisted.location()).unwrap().message.body.to_vec();
            assert_eq!(b.len(), e.body_len as usize);
            b
        };
        r.queues
            .iter()
            .map(|(q, es)| (q.clone(), es.iter().map(|e| (body(e), e.delivery_count)).collect()))
            .filter(|(_, v): &(String, Vec<_>)| !v.is_empty())
            .collect()
    }

    fn scenario(h: &mut dyn Harness) {
        let s = h.store();
        let (a, _) = s.publish(&["q1", "q2"], 1, "x", "k", &[0, 0], b"a");
        let (b, _) = s.publish(&["q1"], 2, "x", "k", &[0, 0], b"b");
        s.publish(&["q3"], 3, "x", "k", &[0, 0], b"c");
        s.ack("q1", a);
        s.delivered("q1", b, 2);
        s.queue_deleted("q3");
        // A message reads back by its location once synced (paging).
        let (r, end) = s.publish(&["q4"], 7, "ex4", "rk4", &[0x10, 0, 2], b"read me");
        for _ in 0..2000 {
            if s.synced() >= end {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let back = s.read(r.location()).unwrap();
        assert_eq!((back.persisted.msg_id, back.published_at), (r.msg_id, 7));
        assert_eq!((back.message.exchange.as_str(), back.message.routing_key.as_str()), ("ex4", "rk4"));
        assert_eq!((&back.message.properties[..], &back.message.body[..]), (&[0x10, 0, 2][..], &b"read me"[..]));
        assert!(s.read(r.location() + 1).is_err(), "no record starts there");
        let rec = h.restart();
        // Recovered entries read back by location.
        for entries in rec.queues.values() {
            for e in entries {
                let back = h.store().read(e.persisted.location()).unwrap();
                assert_eq!(back.persisted.msg_id, e.persisted.msg_id);
                assert_eq!(back.message.body.len(), e.body_len as usize);
                assert_eq!(back.published_at, e.published_at);
            }
        }
        let v = view(h.store(), &rec);
        assert_eq!(v["q1"], vec![(b"b".to_vec(), 2)]);
        assert_eq!(v["q2"], vec![(b"a".to_vec(), 0)]);
        assert!(!v.contains_key("q3"));
        // After the restart the store keeps working and ids do not repeat.
        let (c, _) = h.store().publish(&["q2"], 4, "x", "k", &[0, 0], b"d");
        assert!(c.msg_id > b.msg_id);
        let rec = h.restart();
        assert_eq!(view(h.store(), &rec)["q2"].len(), 2);
    }

    #[test]
    fn random_records_read_back_after_restarts() {
        let mut disk = Disk::new("readback");
        let s = disk.store();
        let mut wanted = Vec::new();
        for i in 0..2000u32 {
            let body = vec![(i % 251) as u8; (i as usize * 37) % 3000];
            let (p, _) = s.publish(&["q"], i as u64, "x", &format!("k{i}"), &[0, 0], &body);
            wanted.push((p.location(), body));
        }
        disk.restart();
        for (loc, body) in &wanted {
            assert_eq!(&disk.store().read(*loc).unwrap().message.body[..], &body[..]);
        }
    }

    #[test]
    fn both_stores_conform() {
        scenario(&mut Mem(MemoryMessageStore::new()));
        scenario(&mut Disk::new("scenario"));
    }

    #[test]
    fn disk_log_matches_the_model_over_random_operations_and_restarts() {
        let mut model = Mem(MemoryMessageStore::new());
        let mut disk = Disk::new("random");
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let queues = ["a", "b", "c", "d"];
        // (queue, Persisted of each store) for messages not yet acked.
        let mut held: Vec<(&str, Persisted, Persisted)> = Vec::new();
        for step in 0..3000u64 {
            match rnd(10) {
                0..=4 => {
                    let n = 1 + rnd(3) as usize;
                    let qs: Vec<&str> = (0..n)
                        .map(|_| queues[rnd(4) as usize])
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let body = step.to_be_bytes();
                    let (m1, _) = model.store().publish(&qs, step, "x", "k", &[0, 0], &body);
                    let (m2, _) = disk.store().publish(&qs, step, "x", "k", &[0, 0], &body);
                    for q in qs {
                        held.push((q, m1, m2));
                    }
                }
                5..=6 if !held.is_empty() => {
                    let (q, m1, m2) = held.swap_remove(rnd(held.len() as u64) as usize);
                    model.store().ack(q, m1);
                    disk.store().ack(q, m2);
                }
                7 if !held.is_empty() => {
                    let (q, m1, m2) = held[rnd(held.len() as u64) as usize];
                    let count = 1 + rnd(5) as u32;
                    model.store().delivered(q, m1, count);
                    disk.store().delivered(q, m2, count);
                }
                8 if rnd(20) == 0 => {
                    let q = queues[rnd(4) as usize];
                    model.store().queue_deleted(q);
                    disk.store().queue_deleted(q);
                    held.retain(|(hq, _, _)| *hq != q);
                }
                9 if rnd(10) == 0 => {
                    let (d, m) = (disk.restart(), model.restart());
                    assert_eq!(view(disk.store(), &d), view(model.store(), &m), "diverged at step {step}");
                    // Ids continue from the same place in both, so held refs stay valid.
                }
                _ => {}
            }
        }
        let (d, m) = (disk.restart(), model.restart());
        assert_eq!(view(disk.store(), &d), view(model.store(), &m));
    }
}
