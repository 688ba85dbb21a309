//! The `mesh-bridge` binary: `run`, `status` and `state`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_bridge::config::{Config, LogFormat, RunArgs};
use mesh_bridge::state::StateArgs;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-bridge",
    version,
    about = "Stable host ports for labelled Docker services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge daemon.
    Run(Box<RunArgs>),
    /// Show the pool and the services as a table.
    Status {
        /// Base URL of a running bridge's API.
        #[arg(long, env = "MESH_BRIDGE_API", default_value = "http://127.0.0.1:9464")]
        api: String,
    },
    /// Export, import or check the durable state.
    State(StateArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_BRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs piped to a file, journald or `docker
    // logs` must not carry escape codes (NO_COLOR turns them off anywhere).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(args)?;
    init_logging(config.log_format);
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot install the SIGTERM handler");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            signals.cancel();
        });
        mesh_bridge::app::run(args, config, shutdown).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(ExitCode::SUCCESS)
}

fn status(api: &str) -> anyhow::Result<ExitCode> {
    use mesh_bridge::contract::api::{POOL, PoolView, SERVICES, ServiceView};
    let rt = runtime()?;
    let (pool, services) = rt.block_on(async {
        let pool: PoolView = mesh_bridge::api::get_json(api, POOL).await?;
        let services: Vec<ServiceView> = mesh_bridge::api::get_json(api, SERVICES).await?;
        Ok::<_, anyhow::Error>((pool, services))
    })?;
    let ranges: Vec<String> = pool
        .ranges
        .iter()
        .map(|[a, b]| format!("{a}-{b}"))
        .collect();
    println!(
        "pool {}: capacity {}, in use {}, quarantined {}, conflicted {}, free {}, pending {}",
        ranges.join(","),
        pool.capacity,
        pool.in_use,
        pool.quarantined,
        pool.conflicted,
        pool.free,
        pool.pending
    );
    println!();
    println!(
        "{:<32} {:>6}  {:<12} {:>8}  REASON",
        "SERVICE", "PORT", "STATE", "REPLICAS"
    );
    for s in &services {
        let port = s.port.map_or_else(|| "-".into(), |p| p.to_string());
        println!(
            "{:<32} {:>6}  {:<12} {:>8}  {}",
            s.name,
            port,
            s.state.as_str(),
            s.replicas.len(),
            s.reason.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Status { api } => status(&api),
        Command::State(args) => mesh_bridge::state::run(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-bridge: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
