//! `dpsd`: the provisioning service. `dpsd serve` runs it; see README.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dpsd::{Config, DpsdError, Flags};

/// Exit status for a configuration error (EX_CONFIG would be 78; the project uses 64,
/// EX_USAGE, as documented in the README).
const EXIT_CONFIG: u8 = 64;

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
        host_name,
        log,
    } = Cli::parse().command;
    let flags = Flags {
        data_dir,
        listen,
        mqtt_listen,
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpsd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = dpsd::start(config).await.map_err(|e| match e {
        DpsdError::Config(c) => anyhow::anyhow!(c),
        other => anyhow::anyhow!(other),
    })?;
    // Written with errors ignored: a closed stdout (a supervisor that stopped reading) must
    // not stop the service.
    let data = running.data_dir.display();
    let banner = format!(
        "dpsd is serving\n  service API     https://{}\n  device MQTT     mqtts://{}\n  ID scope        {}\n  trust this CA   {}\n  connection      {}\n  (also in {data}/service-connection-string and {data}/id-scope)\n",
        running.api_addr,
        running.mqtt_addr,
        running.id_scope,
        running.ca_file.display(),
        running.connection_string,
    );
    let mut out = std::io::stdout();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
