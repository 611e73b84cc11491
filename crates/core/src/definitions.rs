//! Durable definitions: a vhost's durable exchanges, queues and bindings,
//! kept as one JSON snapshot per vhost and rewritten atomically (write a
//! temporary file, fsync, rename, fsync the directory) after every change.
//! Arguments are kept as their exact AMQP field-table encoding (hex), so
//! equivalence checks after a restart see the same types.
//! Format: `docs/storage.md`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warren_protocol::FieldTable;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    pub version: u32,
    pub vhost: String,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub auto_delete: bool,
    pub arguments: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange", as in RabbitMQ's definitions export.
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: String,
}

pub fn encode_table(t: &FieldTable) -> String {
    let bytes = cookie_factory::gen_simple(amq_protocol::types::generation::gen_field_table(t), Vec::new())
        .expect("writing to a Vec cannot fail");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_table(hex: &str) -> Option<FieldTable> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    let bytes = bytes?;
    amq_protocol::types::parsing::parse_field_table(&bytes[..]).ok().map(|(_, t)| t)
}

/// Where a vhost's snapshot lives under the definitions directory.
pub fn path_for(dir: &Path, vhost: &str) -> PathBuf {
    let name: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("vhost-{name}.json"))
}

/// Saves `defs` to `path` crash-safely (a temporary file, fsync'd, renamed)
/// and tells the broker's save observer ([`Hooks::on_save`](crate::hooks::Hooks::on_save)).
pub fn save(hooks: &crate::hooks::Hooks, path: &Path, defs: &impl Serialize) -> io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(defs).map_err(io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    // Held across the rename, so that observers see saves in file order.
    let observer = hooks.on_save.read().unwrap_or_else(|e| e.into_inner());
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    if let Some(observe) = observer.as_ref() {
        observe(path, &bytes);
    }
    Ok(())
}

/// Every vhost snapshot in `dir`. A file that cannot be read is logged and
/// skipped: the broker still starts.
pub fn load_all(dir: &Path) -> Vec<Definitions> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let is_vhost = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vhost-"));
        if !is_vhost || p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(d) => out.push(d),
            Err(e) => tracing::error!(file = %p.display(), error = %e, "cannot read definitions; skipping"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::AMQPValue;

    #[test]
    fn tables_round_trip_with_their_types() {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(5));
        t.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(3));
        t.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("dlx".into()));
        assert_eq!(decode_table(&encode_table(&t)), Some(t));
        assert_eq!(decode_table("zz"), None);
    }

    #[test]
    fn save_and_load() {
        let scratch = tempfile::Builder::new().prefix("warren-defs-").tempdir().unwrap();
        let dir = scratch.path().join("definitions");
        let d = Definitions {
            version: FORMAT_VERSION,
            vhost: "/".into(),
            queues: vec![QueueDef {
                name: "q".into(),
                auto_delete: false,
                arguments: encode_table(&FieldTable::default()),
            }],
            ..Default::default()
        };
        save(&Default::default(), &path_for(&dir, "/"), &d).unwrap();
        fs::write(dir.join("vhost-broken.json"), b"{").unwrap();
        let all = load_all(&dir);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].queues[0].name, "q");
    }
}
