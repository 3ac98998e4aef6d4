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
/// environment variables (e.g. WARREN_AMQP_PORT), then --set, then the other flags.
/// SIGHUP re-reads the TLS certificate and key, the alarm limits and the log level.
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
    /// After binding, write {"amqp":PORT,"amqps":PORT,"mgmt":PORT,"metrics":PORT} to this file
    /// (0 for a listener that is off; for tests and scripts).
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Set any key, as in the config file: --set section.key=value
    /// (e.g. --set alarms.disk_free_limit=1000000000); repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Exit 0 if the broker configured like this one (same --config,
    /// environment and flags) answers its management health check; exit 1
    /// otherwise. For container HEALTHCHECKs: a liveness check, so that a
    /// resource alarm (which a restart would not cure) does not get the
    /// container replaced; --fail-on-alarms makes alarms count.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// Also fail while a memory or disk alarm is on.
        #[arg(long)]
        fail_on_alarms: bool,
    },
    /// Load-test an AMQP 0-9-1 broker (Warren or RabbitMQ): progress on
    /// stderr, one JSON line of results on stdout. Loopback brokers only
    /// unless --allow-remote.
    Perf(warren::perf::PerfArgs),
}

fn load(cli: &Cli) -> Result<Config, warren::config::ConfigError> {
    let mut cfg = Config::load_with(cli.config.as_deref(), std::env::vars(), &cli.set)?;
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

/// Changes the log filter of the running subscriber (SIGHUP).
type LogLevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(cfg: &Config) -> Result<LogLevelHandle, String> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .map_err(|e| format!("invalid value for 'log.level': {e}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let (writer, ansi) = if cfg.log.output == "stderr" {
        (BoxMakeWriter::new(std::io::stderr), std::io::IsTerminal::is_terminal(&std::io::stderr()))
    } else {
        (BoxMakeWriter::new(std::io::stdout), std::io::IsTerminal::is_terminal(&std::io::stdout()))
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    if cfg.log.format == "json" {
        registry.with(layer.json()).init();
    } else {
        registry.with(layer).init();
    }
    Ok(handle)
}

fn write_ports_file(path: &PathBuf, h: &warren::server::ServerHandle) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let (amqp, mgmt, metrics) = (h.amqp_addr.port(), h.mgmt_addr.port(), h.metrics_addr.port());
    let amqps = h.amqps_addr.map(|a| a.port()).unwrap_or(0);
    std::fs::write(
        &tmp,
        format!("{{\"amqp\":{amqp},\"amqps\":{amqps},\"mgmt\":{mgmt},\"metrics\":{metrics}}}\n"),
    )?;
    std::fs::rename(tmp, path)
}

enum Signal {
    /// SIGTERM or SIGINT: shut down gracefully.
    Stop,
    /// SIGHUP: re-read the configuration's reloadable parts.
    Reload,
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Signal {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}

/// SIGHUP: the configuration is loaded again from the same file,
/// environment and flags; what can change while running is applied.
fn reload(cli: &Cli, handle: &warren::server::ServerHandle, log: &LogLevelHandle) {
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, configuration unchanged: {e}");
            return;
        }
    };
    match tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        Ok(f) => {
            if let Err(e) = log.reload(f) {
                tracing::error!("cannot change the log level: {e}");
            }
        }
        Err(e) => tracing::error!("reload: invalid value for 'log.level': {e}"),
    }
    match handle.reload(&cfg) {
        Ok(()) => tracing::info!("configuration reloaded (TLS material, alarm limits, log level)"),
        Err(e) => tracing::error!("reload failed, the previous TLS configuration stays: {e}"),
    }
}

/// `warren perf`: a client, not the daemon; its output is the terminal's.
fn perf(args: warren::perf::PerfArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            fatal(&format!("warren perf: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(warren::perf::run(args)) {
        Ok(result) => {
            let _ = writeln!(std::io::stdout(), "{result}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            fatal(&format!("warren perf: {e}"));
            ExitCode::from(2)
        }
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
    if let Some(Command::Perf(args)) = &cli.command {
        return perf(args.clone());
    }
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
    if let Some(Command::Healthcheck { timeout, fail_on_alarms }) = &cli.command {
        // The one-line verdict is the command's output (docker shows it).
        let mut out = std::io::stdout();
        return match warren::healthcheck::check(
            &cfg,
            std::time::Duration::from_secs(*timeout),
            *fail_on_alarms,
        ) {
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
    let log = match init_logging(&cfg) {
        Ok(h) => h,
        Err(e) => {
            fatal(&format!("warren: {e}"));
            return ExitCode::from(2);
        }
    };
    let workers = cfg.runtime.workers();
    tracing::debug!(workers, "starting the runtime");
    // One name for the runtime's threads: its workers, and the threads
    // that take a worker's place while it waits on the disk (a definitions
    // sync) or that run blocking jobs. A worker moves between threads, so
    // no name can tell them apart; at startup there are exactly `workers`.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("warren-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Installed before the listeners open: a signal sent as soon as the
        // ports file exists is never missed.
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let handle = match warren::start(cfg).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &cli.ports_file
            && let Err(e) = write_ports_file(path, &handle)
        {
            tracing::error!(error = %e, path = %path.display(), "cannot write ports file");
            return ExitCode::FAILURE;
        }
        while let Signal::Reload = signals.next().await {
            reload(&cli, &handle, &log);
        }
        tracing::info!("signal received; shutting down");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
