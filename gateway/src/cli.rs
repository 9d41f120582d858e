//! The `gateway` command line: `serve` runs the daemon, `config check` validates a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::assemble;
use crate::config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, DEFAULT_DATA_DIR};
use crate::server::{self, Exports, Listen};
use gateway_sdk::Event;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Storage gateway: volumes over NBD on pluggable backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured exports over NBD until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without it, the embedded default: `vol0`, 1 GiB, on a
    /// sparse file in the data directory, on 127.0.0.1:10809.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen on this TCP address instead of the configured ones (repeatable; port 0 picks
    /// a free port, which is logged).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Also listen on this unix socket.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Directory for relative backend paths (overrides the config's `server.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; exits non-zero naming the file, line and key at fault.
    Check { file: PathBuf },
    /// Print the embedded default configuration.
    Default,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn check(file: &Path) -> anyhow::Result<()> {
    let c = Config::load(file)?;
    println!("{}: ok ({} export{})", file.display(), c.exports.len(), if c.exports.len() == 1 { "" } else { "s" });
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)?,
    };
    let data_dir = args.data_dir.or(config.data_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let plugin_dir = config.plugin_dir.clone().unwrap_or_else(crate::plugin::loader::default_dir);
    let volumes = assemble::volumes(&config, &data_dir, &plugin_dir)?;
    let mut policies = assemble::Policies::load(&config, &plugin_dir)?;
    let listen = Listen {
        tcp: if args.listen.is_empty() { config.listen.clone() } else { args.listen },
        unix: args.unix.or(config.unix.clone()),
        max_connections: config.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        policies.deliver(&Event::Started { node: node_name(), role: "server".into() });
        let result = server::run(Exports::new(volumes), listen, shutdown.clone()).await;
        signals.abort();
        policies.deliver(&Event::Stopping { mode: "normal".into() });
        result
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

fn node_name() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "gateway".into())
}
