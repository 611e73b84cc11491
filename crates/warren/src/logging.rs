//! Where log lines go and how they look: `--log-level` (tracing directives,
//! env `WARREN_LOG`), `--log-format text|json`, `--log-file FILE` (appended
//! to; reopened on SIGHUP, so logrotate can move it away).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use warren_node::Config;

/// The log file, reopened in place on SIGHUP.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().create(true).append(true).open(path)
    }

    /// Opens the file again (logrotate moved the old one away).
    pub fn reopen(&self) {
        match Self::open(&self.path) {
            Ok(f) => *self.file.lock() = f,
            Err(e) => tracing::error!(file = %self.path.display(), error = %e, "cannot reopen the log file"),
        }
    }
}

/// One log line's writer: it holds the file while the line is written.
pub struct LineWriter<'a>(parking_lot::MutexGuard<'a, std::fs::File>);

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self.file.lock())
    }
}

/// Sets up logging as configured; the log file, if any (for SIGHUP).
pub fn init(config: &Config) -> anyhow::Result<Option<LogFile>> {
    // The client library the links use (lapin) logs, as errors, what the
    // links expect and report themselves (a passive declare's 404, a
    // closed connection): it is quiet unless the filter names it.
    let mut level = config.log_level.clone();
    if !level.contains("lapin") {
        level.push_str(",lapin=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", config.log_level))?;
    let file = match &config.log_file {
        Some(path) => {
            let f = LogFile::open(path).map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            Some(LogFile { path: path.clone(), file: Arc::new(Mutex::new(f)) })
        }
        None => None,
    };
    let json = config.log_format == "json";
    let ansi = file.is_none() && !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    match (&file, json) {
        (Some(f), true) => builder.event_format(Json).with_writer(f.clone()).init(),
        (Some(f), false) => builder.with_writer(f.clone()).init(),
        (None, true) => builder.event_format(Json).init(),
        (None, false) => builder.init(),
    }
    Ok(file)
}

/// One JSON object per line: `time`, `level`, `target`, `message`, and the
/// event's other fields under `fields`.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut time = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = serde_json::json!({
            "time": time,
            "level": meta.level().as_str(),
            "target": meta.target(),
            "message": fields.message,
            "fields": fields.rest,
        });
        writeln!(w, "{line}")
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            name => {
                self.rest.insert(name.to_owned(), text.into());
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            name => {
                self.rest.insert(name.to_owned(), value.into());
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().to_owned(), value.into());
    }
}
