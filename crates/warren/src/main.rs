//! `warren`: the broker binary.

mod server;

use clap::Parser;

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
    let config = warren_node::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    warren_amqp::panics::install_hook();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        builder.worker_threads(config.workers);
    }
    builder.on_thread_park(warren_node::heap::on_worker_park);
    let runtime = builder.enable_all().build()?;
    runtime.block_on(server::run(config))
}
