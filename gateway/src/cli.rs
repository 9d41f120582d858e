//! The `gateway` command line: `serve` runs the daemon, `config check` validates a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::assemble;
use crate::config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, DEFAULT_DATA_DIR};
use crate::replication;
use crate::server::{self, Exports, Listen};
use gateway_sdk::Event;
use std::sync::Arc;

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
    /// Talk to a running daemon over its admin socket.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The daemon's admin socket (default: admin.sock in the data directory).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's data directory, to find its admin socket.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Exports and volume sets: state, direction, dirty bytes, resync progress, last error.
    Status,
    /// Hold host I/O and stop mirroring (PPRC freeze).
    Freeze { volume_set: String },
    /// Release I/O held by a freeze; changes are tracked.
    Run { volume_set: String },
    /// Stop mirroring; keep serving and track changes.
    Suspend { volume_set: String },
    /// Copy the tracked regions to the peer; the set returns to InSync.
    Resync { volume_set: String },
    /// Reverse the mirroring direction (needs InSync).
    Swap { volume_set: String },
    /// Make this (recovery) site production now, tracking its changes.
    Failover {
        volume_set: String,
        /// Even if the production site still answers.
        #[arg(long)]
        force: bool,
    },
    /// Resync back to the original production site and swap production back.
    Failback { volume_set: String },
    /// Make the surviving site usable after a site loss or freeze.
    Recover { volume_set: String },
    /// Bring the set to a state where `--site` (default: this site) may serve it, then verify.
    Online {
        volume_set: String,
        #[arg(long)]
        site: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Release the set at this site (reverse mirroring when moving across sites).
    Offline {
        volume_set: String,
        #[arg(long)]
        moving_across_site: bool,
    },
    /// After a force swap, resync the rejoined old site.
    JoinCleanup { volume_set: String },
    /// Wait until the set reaches STATE.
    WaitForState {
        volume_set: String,
        state: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Compare this site's volume set definitions with the peer's.
    VerifyConfig,
    /// Quorum controllers: take servers out of operation with a shutdown mode. Given to any
    /// one controller, which broadcasts it to the others.
    Shutdown {
        /// A, B (the servers' site names) or both.
        #[arg(long)]
        server: String,
        #[arg(long, default_value = "normal", value_parser = ["normal", "expedite", "immediate", "force"])]
        mode: String,
    },
    /// Quorum controllers: bring servers back (the controllers then decide what goes online).
    Return {
        /// A, B or both.
        #[arg(long)]
        server: String,
    },
    /// Quorum controllers: status and first setup.
    #[command(subcommand)]
    Quorum(QuorumCommand),
}

#[derive(Subcommand)]
enum QuorumCommand {
    /// The outcome and why, the servers, each controller's election, the saved key.
    Status,
    /// Give a controller without a key a blank one (only when setting a system up anew).
    Bootstrap,
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
    tune_allocator();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check { file }) => check(&file),
        Command::Ctl(args) => ctl(args),
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
    let peers = replication::observers(&config);
    let volumes = assemble::volumes(&config, &data_dir, &plugin_dir, &peers)?;
    let engine = replication::Engine::build(&config, &volumes, &peers, &data_dir, |policy_config| {
        assemble::replication_policy(&config, &plugin_dir, policy_config)
    })?;
    let mut policies = assemble::Policies::load(&config, &plugin_dir)?;
    let controller = match &config.controller {
        Some(c) => Some(assemble::controller(c, &data_dir, &plugin_dir)?),
        None => None,
    };
    let admin_socket = match &config.admin_socket {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => data_dir.join(p),
        None => data_dir.join("admin.sock"),
    };
    let listen = Listen {
        tcp: if args.listen.is_empty() { config.listen.clone() } else { args.listen },
        unix: args.unix.or(config.unix.clone()),
        max_connections: config.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        if let Some(e) = &engine {
            e.start(shutdown.clone()).await?;
        }
        let exports = Exports::new(volumes);
        if let Some(c) = &controller {
            c.start(shutdown.clone()).await?;
        }
        let serves_hosts = !exports.volumes().is_empty() || controller.is_none();
        let admin = Arc::new(Admin { exports: exports.clone(), engine: engine.clone(), controller });
        admin::serve(admin_socket, admin, shutdown.clone()).await?;
        policies.deliver(&Event::Started { node: node_name(), role: "server".into() });
        let result = if serves_hosts {
            server::run(exports, listen, shutdown.clone()).await
        } else {
            // A standalone controller (a witness) exports nothing.
            shutdown.cancelled().await;
            Ok(())
        };
        signals.abort();
        policies.deliver(&Event::Stopping { mode: "normal".into() });
        if let (Some(e), Ok(())) = (&engine, &result) {
            e.stopped_cleanly();
        }
        result
    });
    // A plugin call that never returns keeps a blocking-pool thread forever; do not let it
    // hold the process hostage after an orderly shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
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

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    use serde_json::json;
    let socket = args.socket.clone().unwrap_or_else(|| args.data_dir.join("admin.sock"));
    let req = match &args.command {
        CtlCommand::Status => json!({"command": "status"}),
        CtlCommand::VerifyConfig => json!({"command": "verify-config"}),
        CtlCommand::Freeze { volume_set } => json!({"command": "freeze", "volume_set": volume_set}),
        CtlCommand::Run { volume_set } => json!({"command": "run", "volume_set": volume_set}),
        CtlCommand::Suspend { volume_set } => json!({"command": "suspend", "volume_set": volume_set}),
        CtlCommand::Resync { volume_set } => json!({"command": "resync", "volume_set": volume_set}),
        CtlCommand::Swap { volume_set } => json!({"command": "swap", "volume_set": volume_set}),
        CtlCommand::Failover { volume_set, force } => {
            json!({"command": "failover", "volume_set": volume_set, "force": force})
        }
        CtlCommand::Failback { volume_set } => json!({"command": "failback", "volume_set": volume_set}),
        CtlCommand::Recover { volume_set } => json!({"command": "recover", "volume_set": volume_set}),
        CtlCommand::JoinCleanup { volume_set } => json!({"command": "join-cleanup", "volume_set": volume_set}),
        CtlCommand::Online { volume_set, site, timeout } => {
            let mut r = json!({"command": "online", "volume_set": volume_set, "timeout_ms": timeout * 1000});
            if let Some(s) = site {
                r["site"] = json!(s);
            }
            r
        }
        CtlCommand::Offline { volume_set, moving_across_site } => {
            json!({"command": "offline", "volume_set": volume_set, "moving_across_site": moving_across_site})
        }
        CtlCommand::WaitForState { volume_set, state, timeout } => {
            json!({"command": "wait-for-state", "volume_set": volume_set, "state": state, "timeout_ms": timeout * 1000})
        }
        CtlCommand::Shutdown { server, mode } => json!({"command": "shutdown", "servers": [server], "mode": mode}),
        CtlCommand::Return { server } => json!({"command": "return", "servers": [server]}),
        CtlCommand::Quorum(QuorumCommand::Status) => json!({"command": "quorum-status"}),
        CtlCommand::Quorum(QuorumCommand::Bootstrap) => json!({"command": "quorum-bootstrap"}),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let reply = runtime.block_on(admin::request(&socket, &req))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default());
    } else if reply["ok"] == true {
        match args.command {
            CtlCommand::Status => print!("{}", crate::admin::status_table(&reply["result"])),
            CtlCommand::Shutdown { .. } | CtlCommand::Return { .. } | CtlCommand::Quorum(_) => {
                print!("{}", crate::admin::quorum_table(&reply["result"]))
            }
            _ => println!("ok: {}", reply["result"]),
        }
    }
    if reply["ok"] != true {
        anyhow::bail!("{}", reply["error"].as_str().unwrap_or("the daemon refused the request"));
    }
    if matches!(args.command, CtlCommand::VerifyConfig) && reply["result"]["ok"] != true {
        let problems: Vec<String> = reply["result"]["problems"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap_or_default().to_owned()).collect())
            .unwrap_or_default();
        anyhow::bail!("verify-config found problems:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Request buffers of up to 32 MiB come and go at high rates. glibc serves blocks above its
/// mmap threshold with fresh mappings and trims freed memory eagerly, so every large request
/// would fault its buffer in page by page. Keep such blocks on the heap and reuse them.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
