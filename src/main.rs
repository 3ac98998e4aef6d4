//! The `warren` binary: parse flags, load configuration, start the broker,
//! run until SIGINT/SIGTERM, shut down gracefully.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use warren::Config;

/// Warren: an AMQP 0-9-1 message broker compatible with RabbitMQ's clients.
///
/// Settings come from the embedded default, then --config, then WARREN_<SECTION>_<KEY>
/// environment variables (e.g. WARREN_AMQP_PORT), then these flags.
#[derive(Parser, Debug)]
#[command(name = "warren", version)]
struct Cli {
    /// Configuration file (TOML); see config/warren.toml for every key.
    #[arg(long)]
    config: Option<PathBuf>,
    /// AMQP listener port (0 = any free port).
    #[arg(long)]
    amqp_port: Option<u16>,
    /// Management HTTP port (0 = any free port).
    #[arg(long)]
    mgmt_port: Option<u16>,
    /// Prometheus metrics port (0 = any free port).
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log level or tracing filter (e.g. info, debug, warren=trace).
    #[arg(long)]
    log_level: Option<String>,
    /// Address to bind both listeners to (e.g. 127.0.0.1).
    #[arg(long)]
    bind: Option<String>,
    /// After binding, write {"amqp":PORT,"mgmt":PORT,"metrics":PORT} to this file (for tests and scripts).
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Exit 0 if the broker configured like this one (same --config,
    /// environment and flags) answers its management health check with no
    /// resource alarm; exit 1 otherwise. For container HEALTHCHECKs.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn load(cli: &Cli) -> Result<Config, warren::config::ConfigError> {
    let mut cfg = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(p) = cli.amqp_port {
        cfg.amqp.port = p;
    }
    if let Some(p) = cli.mgmt_port {
        cfg.management.port = p;
    }
    if let Some(p) = cli.metrics_port {
        cfg.prometheus.port = p;
    }
    if let Some(d) = &cli.data_dir {
        cfg.storage.data_dir = d.clone();
    }
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(b) = &cli.bind {
        cfg.amqp.bind = b.clone();
        cfg.management.bind = b.clone();
        cfg.prometheus.bind = b.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(cfg: &Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| format!("invalid value for 'log.level': {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn write_ports_file(path: &PathBuf, amqp: u16, mgmt: u16, metrics: u16) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{{\"amqp\":{amqp},\"mgmt\":{mgmt},\"metrics\":{metrics}}}\n"))?;
    std::fs::rename(tmp, path)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reports an error that happens before logging is configured (bad
/// configuration): through a plain stderr subscriber, still via tracing.
fn fatal(msg: &str) {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || tracing::error!("{msg}"));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            fatal(&format!("warren: {e}"));
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Healthcheck { timeout }) = &cli.command {
        // The one-line verdict is the command's output (docker shows it).
        let mut out = std::io::stdout();
        return match warren::healthcheck::check(&cfg, std::time::Duration::from_secs(*timeout)) {
            Ok(body) => {
                let _ = writeln!(out, "healthy: {body}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                let _ = writeln!(out, "unhealthy: {why}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(&cfg) {
        fatal(&format!("warren: {e}"));
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let handle = match warren::start(cfg).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &cli.ports_file
            && let Err(e) = write_ports_file(
                path,
                handle.amqp_addr.port(),
                handle.mgmt_addr.port(),
                handle.metrics_addr.port(),
            )
        {
            tracing::error!(error = %e, path = %path.display(), "cannot write ports file");
            return ExitCode::FAILURE;
        }
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
