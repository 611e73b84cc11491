//! A replica of a node's data directory, applying the changes its leader
//! streams: appends at an offset (an append the replica already holds is
//! written again, with the same bytes, at its offset), deletions, whole-file
//! replacements (definitions saves), and fsyncs on demand. Cluster
//! followers apply the leader's stream with it, and the message log's own
//! test checks that a replica applying its [`FileOp`](crate::log::FileOp)s
//! recovers the same log ([`Replica::apply_log_op`]): one applier, so the
//! two cannot drift.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::log::{segment_file_name, FileOp};

/// Where the message log lives in a data directory.
pub const MESSAGES_DIR: &str = "messages";

/// A replicated file's path for a log segment, as streamed to replicas.
pub fn segment_path(segment: u32) -> String {
    format!("{MESSAGES_DIR}/{}", segment_file_name(segment))
}

/// Applies changes to the data directory `dir`.
pub struct Replica {
    dir: PathBuf,
    open: HashMap<String, File>,
    dirty: HashSet<String>,
    dirs_dirty: bool,
    /// Written since the last flush.
    unsynced: u64,
}

impl Replica {
    pub fn new(dir: PathBuf) -> Replica {
        Replica { dir, open: HashMap::new(), dirty: HashSet::new(), dirs_dirty: false, unsynced: 0 }
    }

    /// Bytes written since the last [`flush`](Replica::flush).
    pub fn unsynced(&self) -> u64 {
        self.unsynced
    }

    /// Every file under the directories `dirs` (relative paths) that `keep`
    /// accepts, with its size and SHA-256: a leader sends only what differs.
    pub fn inventory(
        &mut self,
        dirs: &[&str],
        keep: impl Fn(&str) -> bool,
    ) -> io::Result<Vec<(String, u64, [u8; 32])>> {
        use sha2::Digest;
        self.flush(dirs)?;
        self.open.clear();
        let mut out = Vec::new();
        for d in dirs {
            let dir = self.dir.join(d);
            fs::create_dir_all(&dir)?;
            for e in fs::read_dir(&dir)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = format!("{d}/{name}");
                if !(name.ends_with(".seg") || name.ends_with(".json")) || !keep(&path) {
                    continue;
                }
                let mut h = sha2::Sha256::new();
                let mut f = File::open(e.path())?;
                let mut buf = vec![0; 1 << 20];
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

    /// Writes `bytes` at `offset` of `path`; an offset past the file's end
    /// means the replica has diverged (an error).
    pub fn append(&mut self, path: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let f = match self.open.entry(path.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let full = self.dir.join(path);
                if !full.exists() {
                    self.dirs_dirty = true;
                }
                e.insert(OpenOptions::new().create(true).write(true).truncate(false).open(full)?)
            }
        };
        let len = f.metadata()?.len();
        if offset > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: {len} octets here, the leader appends at {offset}: diverged"),
            ));
        }
        f.write_all_at(bytes, offset)?;
        self.unsynced += bytes.len() as u64;
        self.dirty.insert(path.to_owned());
        Ok(())
    }

    /// Deletes `path` (already gone is fine).
    pub fn delete(&mut self, path: &str) -> io::Result<()> {
        self.open.remove(path);
        self.dirty.remove(path);
        match fs::remove_file(self.dir.join(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.dirs_dirty = true;
        Ok(())
    }

    /// Replaces `path` whole, crash-safely (a temporary file renamed).
    pub fn replace(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
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

    /// Makes everything applied so far durable (the files written, and the
    /// directories `dirs` if files came or went).
    pub fn flush(&mut self, dirs: &[&str]) -> io::Result<()> {
        self.unsynced = 0;
        for path in self.dirty.drain() {
            if let Some(f) = self.open.get(&path) {
                f.sync_data()?;
            }
        }
        if self.dirs_dirty {
            for d in dirs {
                let dir = self.dir.join(d);
                if dir.exists() {
                    File::open(dir)?.sync_all()?;
                }
            }
            self.dirs_dirty = false;
        }
        // Keep the files still being appended to open, close the rest.
        if self.open.len() > 4 {
            self.open.clear();
        }
        Ok(())
    }

    /// Applies one change the message log reported (its segments live in
    /// [`MESSAGES_DIR`]) and syncs it.
    pub fn apply_log_op(&mut self, op: FileOp<'_>) -> io::Result<()> {
        match op {
            FileOp::Append { segment, offset, bytes } => {
                fs::create_dir_all(self.dir.join(MESSAGES_DIR))?;
                self.append(&segment_path(segment), offset, bytes)?
            }
            FileOp::Delete { segment } => self.delete(&segment_path(segment))?,
            FileOp::Written { .. } => {}
        }
        self.flush(&[MESSAGES_DIR])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRS: [&str; 2] = ["messages", "definitions"];

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-replica-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_replica_mirrors_appends_deletions_and_replacements() {
        let dir = tmp("apply");
        let mut a = Replica::new(dir.clone());
        assert!(a.inventory(&DIRS, |_| true).unwrap().is_empty());
        a.append("messages/00000001.seg", 0, b"hello ").unwrap();
        a.append("messages/00000001.seg", 6, b"world").unwrap();
        // Again at an offset it holds (the copy and the stream overlap).
        a.append("messages/00000001.seg", 6, b"world").unwrap();
        // Past its end: the replica has diverged.
        assert!(a.append("messages/00000001.seg", 100, b"x").is_err());
        a.append("messages/00000002.seg", 0, b"two").unwrap();
        a.replace("definitions/access.json", b"{}").unwrap();
        a.flush(&DIRS).unwrap();
        assert_eq!(fs::read(dir.join("messages/00000001.seg")).unwrap(), b"hello world");
        a.delete("messages/00000002.seg").unwrap();
        a.delete("messages/00000002.seg").unwrap();
        a.replace("definitions/access.json", b"{\"users\":[]}").unwrap();
        a.flush(&DIRS).unwrap();
        let held = a.inventory(&DIRS, |_| true).unwrap();
        let names: Vec<&str> = held.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"messages/00000001.seg") && names.contains(&"definitions/access.json"));
        let (_, size, digest) = held.iter().find(|(p, _, _)| p == "messages/00000001.seg").unwrap();
        use sha2::Digest;
        assert_eq!((*size, *digest), (11, <[u8; 32]>::from(sha2::Sha256::digest(b"hello world"))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
