//! `dps-loadtest`: the command line over the library (see `dps_loadtest` for what it does and
//! its bounds). Progress goes to stderr (a bar on a terminal, plain lines otherwise, nothing
//! with `--quiet`); the report to stdout (text, or JSON with `--json`) and, with `--csv FILE`,
//! one row appended to FILE. Exit status: 0 all assigned, 2 some not (or cleanup failed), 1
//! setup error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dps_loadtest::baseline::server;
use dps_loadtest::cli::Args;
use dps_loadtest::extras::{Extras, ExtrasArgs};
use dps_loadtest::report::csv;
use dps_loadtest::{Attestation, Config, LoadError, Progress, Transport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is redrawn (plain lines keep the library's default, every 2 s).
const BAR_EVERY: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(code) = server::main_if_child(&argv).await {
        return code;
    }
    let args = Args::parse();
    let (json, quiet, cleanup_only) = (args.json, args.quiet, args.cleanup_only);
    let csv = args.csv.clone();
    let extras = args.extras.clone();
    let outcome = match args.into_config() {
        Ok(config) if cleanup_only => cleanup(&config).await,
        Ok(config) => match extras.hold_config(&config) {
            Some(hold) => run_hold(&config, &hold, json).await,
            None => run(config, &extras, json, quiet, csv).await,
        },
        Err(e) => Err(e),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("dps-loadtest: {e}");
        ExitCode::FAILURE
    })
}

async fn run(
    mut config: Config,
    extras: &ExtrasArgs,
    json: bool,
    quiet: bool,
    csv_file: Option<PathBuf>,
) -> Result<ExitCode, LoadError> {
    let exe = std::env::current_exe().map_err(|e| LoadError::Setup {
        what: "finding this program for the baseline server",
        source: Box::new(e),
    })?;
    let baselines = extras.baseline_settings(&config, exe)?;
    let mut watchers = extras.watchers(&config)?;
    // A CSV file that cannot take the row is refused before any device starts.
    if let Some(path) = &csv_file {
        csv::open(path)?;
    }
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| progress_bar(&config));
    if bar.is_some() {
        config.progress_every = BAR_EVERY;
    }
    if !quiet {
        let schedule = match config.rate {
            Some(rate) => format!("{rate} (at most {} at once)", config.concurrency),
            None => format!("{} at once", config.concurrency),
        };
        let end = match config.duration {
            Some(d) => format!("for {d:?}"),
            None => format!("{} devices", config.devices),
        };
        let ramp = if config.ramp.is_zero() {
            String::new()
        } else {
            format!(", ramp {:?}", config.ramp)
        };
        let mut targets = Vec::new();
        if config.mix.uses_transport(Transport::Mqtt) {
            targets.push(format!("mqtts://{}", config.mqtt));
        }
        if config.mix.uses_transport(Transport::Amqp) {
            targets.push(format!("amqps://{}", config.amqp));
        }
        if config.mix.uses_transport(Transport::Https) {
            targets.push(format!("{} (device API)", config.api.base()));
        }
        let mut line = format!(
            "dps-loadtest: {end} ({}), {schedule}{ramp}, against {} and {} (limit {:?})",
            config.mix,
            targets.join(", "),
            config.api.base(),
            config.duration_limit
        );
        if config.mix.uses(Attestation::X509) {
            line.push_str(
                "\ndps-loadtest: minting the X.509 devices' leaves before the clock starts",
            );
        }
        match &bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
    let (by_time, open) = (config.duration.is_some(), config.rate.is_some());
    let report = dps_loadtest::run_observed(
        &config,
        |progress| match &bar {
            Some(bar) => show(bar, progress, by_time, open),
            None if !quiet => eprintln!("{progress}"),
            None => {}
        },
        &mut watchers,
    )
    .await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if let Some(path) = &csv_file {
        csv::append(path, &report)?;
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

/// A bar over the device count, or over the time with `--duration`.
fn progress_bar(config: &Config) -> ProgressBar {
    let (len, template) = match config.duration {
        Some(d) => (
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            "{elapsed_precise} [{bar:32}] {percent:>3}% {msg}",
        ),
        None => (
            config.devices as u64,
            "{elapsed_precise} [{bar:32}] {pos}/{len} started, {msg}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

fn show(bar: &ProgressBar, p: &Progress, by_time: bool, open: bool) {
    let position = if by_time {
        u64::try_from(p.elapsed.as_millis()).unwrap_or(u64::MAX)
    } else {
        p.started as u64
    };
    bar.set_position(position);
    let secs = p.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        p.assigned as f64 / secs
    } else {
        0.0
    };
    let lag = if open {
        format!(", max lag {:.1} ms", p.max_lag.as_secs_f64() * 1000.0)
    } else {
        String::new()
    };
    bar.set_message(format!(
        "{} assigned ({rate:.0}/s), {} failed, {} in flight{lag}",
        p.assigned, p.failed, p.in_flight
    ));
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
