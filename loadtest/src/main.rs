//! `dps-loadtest`: the command line over the library (see `dps_loadtest` for what it does and
//! its bounds). Exit status: 0 all assigned, 2 some not (or cleanup failed), 1 setup error.

use std::process::ExitCode;

use clap::Parser;
use dps_loadtest::cli::Args;
use dps_loadtest::{Attestation, Config, LoadError, Transport};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (json, quiet, cleanup_only) = (args.json, args.quiet, args.cleanup_only);
    let outcome = match args.into_config() {
        Ok(config) if cleanup_only => cleanup(&config).await,
        Ok(config) => run(&config, json, quiet).await,
        Err(e) => Err(e),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("dps-loadtest: {e}");
        ExitCode::FAILURE
    })
}

async fn run(config: &Config, json: bool, quiet: bool) -> Result<ExitCode, LoadError> {
    if !quiet {
        let mut targets = Vec::new();
        if config.mix.uses_transport(Transport::Mqtt) {
            targets.push(format!("mqtts://{}", config.mqtt));
        }
        if config.mix.uses_transport(Transport::Amqp) {
            targets.push(format!("amqps://{}", config.amqp));
        }
        eprintln!(
            "dps-loadtest: {} devices ({}), {} at once, against {} and {} (limit {:?})",
            config.devices,
            config.mix,
            config.concurrency,
            targets.join(", "),
            config.api.base(),
            config.duration_limit
        );
        if config.mix.uses(Attestation::X509) {
            eprintln!("dps-loadtest: minting the X.509 devices' leaves before the clock starts");
        }
    }
    let report = dps_loadtest::run(config, |progress| {
        if !quiet {
            eprintln!("{progress}");
        }
    })
    .await?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(if report.all_assigned() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn cleanup(config: &Config) -> Result<ExitCode, LoadError> {
    let summary = dps_loadtest::cleanup(config).await?;
    println!(
        "cleanup     {} registration records deleted, groups {}",
        summary.registrations_deleted,
        if summary.group_deleted {
            "deleted"
        } else {
            "deleted or already gone"
        }
    );
    Ok(ExitCode::SUCCESS)
}
