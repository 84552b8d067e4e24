//! `dps-loadtest`: the command line over the library (see `dps_loadtest` for what it does and
//! its bounds). Exit status: 0 all assigned, 2 some not (or cleanup failed), 1 setup error.

use std::process::ExitCode;

use clap::Parser;
use dps_loadtest::baseline::server;
use dps_loadtest::cli::Args;
use dps_loadtest::extras::{Extras, ExtrasArgs};
use dps_loadtest::{Config, LoadError};

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(code) = server::main_if_child(&argv).await {
        return code;
    }
    let args = Args::parse();
    let (json, quiet, cleanup_only) = (args.json, args.quiet, args.cleanup_only);
    let extras = args.extras.clone();
    let outcome = match args.into_config() {
        Ok(config) if cleanup_only => cleanup(&config).await,
        Ok(config) => match extras.hold_config(&config) {
            Some(hold) => run_hold(&config, &hold, json).await,
            None => run(&config, &extras, json, quiet).await,
        },
        Err(e) => Err(e),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("dps-loadtest: {e}");
        ExitCode::FAILURE
    })
}

async fn run(
    config: &Config,
    extras: &ExtrasArgs,
    json: bool,
    quiet: bool,
) -> Result<ExitCode, LoadError> {
    let exe = std::env::current_exe().map_err(|e| LoadError::Setup {
        what: "finding this program for the baseline server",
        source: Box::new(e),
    })?;
    let baselines = extras.baseline_settings(config, exe)?;
    let mut watchers = extras.watchers(config)?;
    if !quiet {
        eprintln!(
            "dps-loadtest: {} devices, {} at once, against mqtts://{} and {} (limit {:?})",
            config.devices,
            config.concurrency,
            config.mqtt,
            config.api.base(),
            config.duration_limit
        );
    }
    let report = dps_loadtest::run_observed(
        config,
        |progress| {
            if !quiet {
                eprintln!("{progress}");
            }
        },
        &mut watchers,
    )
    .await?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    let extras = Extras::collect(watchers, &report, baselines.as_ref()).await;
    if json {
        println!("{}", extras.to_json());
    } else {
        print!("{extras}");
    }
    Ok(if report.all_assigned() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn run_hold(
    config: &Config,
    hold: &dps_loadtest::hold::HoldConfig,
    json: bool,
) -> Result<ExitCode, LoadError> {
    let report = dps_loadtest::hold::run(config, hold).await?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{report}");
    }
    Ok(if report.all_held() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn cleanup(config: &Config) -> Result<ExitCode, LoadError> {
    let summary = dps_loadtest::cleanup(config).await?;
    println!(
        "cleanup     {} registration records deleted, group {}",
        summary.registrations_deleted,
        if summary.group_deleted {
            "deleted"
        } else {
            "already gone"
        }
    );
    Ok(ExitCode::SUCCESS)
}
