//! `dpsd`: the provisioning service. `dpsd serve` runs it; see README.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dpsd::{Config, Flags, LogFilter, Running};

/// mimalloc instead of glibc's malloc: a registration makes many small allocations freed on
/// other threads (TLS records, MQTT and AMQP frames, JSON), where glibc spent about a tenth of
/// the CPU (docs/performance.md has the before/after numbers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error (EX_CONFIG would be 78; the project uses 64,
/// EX_USAGE, as documented in the README).
const EXIT_CONFIG: u8 = 64;
/// Exit status when a listener ended on its own (EX_SOFTWARE): the process exits rather than
/// serve half its protocols, so a supervisor restarts it.
const EXIT_LISTENER_ENDED: u8 = 70;

#[derive(Parser)]
#[command(
    name = "dpsd",
    version,
    about = "Self-hosted device provisioning service, wire-compatible with Azure DPS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (creates a development PKI and credentials on first start).
    Serve {
        /// TOML configuration file (see config/dpsd.toml).
        #[arg(long, env = "DPSD_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory [default: ./data] (config `data_dir`, env DPSD_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTPS API listen address [default: 0.0.0.0:8443] (config `api.listen`).
        #[arg(long)]
        listen: Option<String>,
        /// MQTT device listener address [default: 0.0.0.0:8883] (config `mqtt.listen`).
        #[arg(long)]
        mqtt_listen: Option<String>,
        /// AMQP device listener address [default: 0.0.0.0:5671] (config `amqp.listen`).
        #[arg(long)]
        amqp_listen: Option<String>,
        /// Service host name used in the connection string and SAS audience (config `service.host_name`).
        #[arg(long)]
        host_name: Option<String>,
        /// Log filter, e.g. info or debug (config `log`).
        #[arg(long)]
        log: Option<String>,
    },
}

fn main() -> ExitCode {
    let Command::Serve {
        config,
        data_dir,
        listen,
        mqtt_listen,
        amqp_listen,
        host_name,
        log,
    } = Cli::parse().command;
    let flags = Flags {
        data_dir,
        listen,
        mqtt_listen,
        amqp_listen,
        host_name,
        log,
    };
    let config = match Config::load(config.as_deref(), std::env::vars(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dpsd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config.log);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let mut running = match dpsd::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dpsd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signalled = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dpsd: cannot handle SIGTERM/SIGINT: {e}");
            if let Err(e) = running.shutdown().await {
                eprintln!("dpsd: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    print_banner(&running);
    let ended = tokio::select! {
        () = signalled => None,
        e = running.wait() => Some(e),
    };
    match &ended {
        None => tracing::info!("shutting down"),
        Some(e) => {
            tracing::error!(error = %e, "a listener ended; exiting so that dpsd is restarted whole");
        }
    }
    let drained = running.shutdown().await;
    if let Err(e) = &drained {
        tracing::error!(error = %e, "shutdown");
    }
    match (ended, drained) {
        (Some(_), _) => ExitCode::from(EXIT_LISTENER_ENDED),
        (None, Err(_)) => ExitCode::FAILURE,
        (None, Ok(())) => ExitCode::SUCCESS,
    }
}

/// Where to reach the service, written with errors ignored: a closed stdout (a supervisor that
/// stopped reading) must not stop the service. The connection string itself is shown only by
/// the start that created it; afterwards, where it is kept.
fn print_banner(running: &Running) {
    let data = running.data_dir.display();
    let file = running.connection_string_file.display();
    let connection = if running.connection_string_created {
        format!(
            "{}\n  (new: kept in {file}, readable by you only)",
            running.connection_string
        )
    } else {
        format!("in {file}")
    };
    let https = if running.device_api {
        format!(
            "  device HTTPS    https://{}/{}/registrations/...\n",
            running.api_addr, running.id_scope
        )
    } else {
        String::new()
    };
    let amqp = running
        .amqp_addr
        .map(|addr| format!("  device AMQP     amqps://{addr}\n"))
        .unwrap_or_default();
    let feed = running
        .feed
        .as_ref()
        .map(|f| format!("  assignments to  {f}\n"))
        .unwrap_or_default();
    let metrics = running.metrics_addr.map_or_else(
        || "off (metrics.enabled = false)".to_owned(),
        |addr| format!("http://{addr}/metrics (/healthz, /readyz)"),
    );
    let banner = format!(
        "dpsd is serving\n  service API     https://{}\n{https}  device MQTT     mqtts://{}\n{amqp}  metrics         {metrics}\n{feed}  ID scope        {} (also in {data}/id-scope)\n  trust this CA   {}\n  connection      {connection}\n",
        running.api_addr,
        running.mqtt_addr,
        running.id_scope,
        running.ca_file.display(),
    );
    let mut out = std::io::stdout();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
}
/// Installs the SIGTERM and SIGINT handlers now (before the banner tells anyone the service
/// is up, so a signal sent right after it stops the service gracefully), and returns a future
/// that resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Raises the soft limit on open files to the hard one: every device connection is a file
/// descriptor, and the usual soft limit (1024) is far below the listeners' connection limits.
/// Logged either way, with the numbers, so an operator sees the ceiling in effect.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let show = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    if current == maximum {
        tracing::info!(limit = %show(current), "open file limit (RLIMIT_NOFILE) already at its hard limit");
        return;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    ) {
        Ok(()) => tracing::info!(
            from = %show(current),
            to = %show(maximum),
            "raised the open file limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Err(e) => tracing::warn!(
            limit = %show(current),
            hard = %show(maximum),
            error = %e,
            "could not raise the open file limit (RLIMIT_NOFILE); connections beyond it will be refused"
        ),
    }
}

fn init_logging(filter: &LogFilter) {
    tracing_subscriber::fmt()
        .with_env_filter(filter.env_filter())
        .with_writer(std::io::stderr)
        .init();
}
