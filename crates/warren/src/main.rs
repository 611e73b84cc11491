//! `warren`: the broker binary.

mod logging;
mod server;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use warren_node::conf;
use warren_node::Config;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("ctl") {
        std::process::exit(warren_admin::ctl::main(args.collect()));
    }
    // The data directory holds every persistent message and every password
    // hash: what the broker creates is its user's alone (files 0600,
    // directories 0700), whatever umask it was started under.
    // SAFETY: umask sets this process's file-mode creation mask and returns
    // the old one; it touches no memory.
    unsafe { libc::umask(0o077) };
    warren_node::heap::no_huge_pages();
    let (config, origins, ignored) = settings();
    if config.print_config {
        print_config(&origins);
        return Ok(());
    }
    let log_file = logging::init(&config)?;
    if let Some(path) = &config.config_file {
        for (key, line, why) in &ignored {
            tracing::warn!("{}:{line}: {key} is ignored: {why}", path.display());
        }
    }
    warren_amqp::panics::install_hook();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        builder.worker_threads(config.workers);
    }
    builder.on_thread_park(warren_node::heap::on_worker_park);
    let runtime = builder.enable_all().build()?;
    runtime.block_on(server::run(config, log_file))
}

/// Each setting's flag, value and where it came from.
type Origins = Vec<(String, String, String)>;

/// The settings: defaults, then the configuration file (`--config`), then
/// environment variables, then flags — each later one winning. A file's
/// settings are the flags they stand for, added to the command line where
/// neither the environment nor the command line set them, so they are
/// parsed and checked as flags are. Exits on a bad setting, as clap does.
fn settings() -> (Config, Origins, Vec<(String, usize, &'static str)>) {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = Config::command();
    let first = command.clone().get_matches_from(&argv);
    let mut from_file = Vec::new();
    let mut ignored = Vec::new();
    let mut argv2 = argv.clone();
    if let Some(path) = first.get_one::<std::path::PathBuf>("config_file") {
        let known = |flag: &str| command.get_arguments().any(|a| a.get_long() == Some(flag));
        let file = conf::read(path, &known).unwrap_or_else(|e| {
            eprintln!("warren: {e}");
            std::process::exit(2);
        });
        ignored = file.ignored;
        for s in file.settings {
            let id = s.flag.replace('-', "_");
            let Some(arg) = command.get_arguments().find(|a| a.get_id() == id.as_str()) else {
                eprintln!("warren: {}:{}: {} has no flag --{}", path.display(), s.line, s.key, s.flag);
                std::process::exit(2);
            };
            if matches!(first.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
            match (takes_value, s.value.as_str()) {
                (true, _) => argv2.extend([format!("--{}", s.flag).into(), s.value.clone().into()]),
                (false, "true") => argv2.push(format!("--{}", s.flag).into()),
                (false, _) => {}
            }
            from_file.push((id, format!("{}:{} ({})", path.display(), s.line, s.key)));
        }
    }
    let matches = command.clone().get_matches_from(&argv2);
    let config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut origins = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "print_config" | "help" | "version") {
            continue;
        }
        let value = matches
            .get_raw(id)
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let value = if id == "default_pass" && !value.is_empty() { "(hidden)".to_owned() } else { value };
        let origin = match (from_file.iter().find(|(f, _)| f == id), matches.value_source(id)) {
            (Some((_, at)), Some(ValueSource::CommandLine)) => at.clone(),
            (_, Some(ValueSource::CommandLine)) => "command line".into(),
            (_, Some(ValueSource::EnvVariable)) => {
                format!("environment ({})", arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
            }
            _ => "default".into(),
        };
        origins.push((format!("--{long}"), value, origin));
    }
    (config, origins, ignored)
}

fn print_config(origins: &Origins) {
    let width = origins.iter().map(|(f, v, _)| f.len() + v.len()).max().unwrap_or(0) + 3;
    for (flag, value, origin) in origins {
        let left = format!("{flag} = {value}");
        println!("{left:width$}  # {origin}");
    }
}
