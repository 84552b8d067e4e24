//! `dpsd` raises its open-file limit (RLIMIT_NOFILE) to the hard limit at start-up and says
//! so in its log with both numbers: every device connection is a file descriptor.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use rustix::process::{getrlimit, kill_process, Pid, Resource, Signal};

const DPSD: &str = env!("CARGO_BIN_EXE_dpsd");
/// The soft limit the test starts dpsd with (below any hard limit a CI machine has).
const LOW: u64 = 256;

/// `Max open files` soft and hard limits from `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line["Max open files".len()..].split_whitespace();
    (
        numbers.next().unwrap().to_owned(),
        numbers.next().unwrap().to_owned(),
    )
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_logged() {
    let hard = getrlimit(Resource::Nofile).maximum;
    let hard_text = hard.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    assert!(
        hard.is_none_or(|h| h > LOW),
        "the hard limit is already {hard_text}"
    );
    let dir = tempfile::tempdir().unwrap();
    // The shell lowers the soft limit, then becomes dpsd.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {LOW} && exec \"$0\" \"$@\""))
        .arg(DPSD)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("DPSD_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("dpsd is serving") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "dpsd exited early");
    }
    let (soft, hard_seen) = open_file_limits(child.id());
    kill_process(Pid::from_child(&child), Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    let log = stderr.join().unwrap();

    assert_eq!(
        (soft.as_str(), hard_seen.as_str()),
        (hard_text.as_str(), hard_text.as_str())
    );
    let logged = log
        .lines()
        .find(|l| l.contains("raised the open file limit (RLIMIT_NOFILE)"))
        .unwrap_or_else(|| panic!("no line about the open file limit in:\n{log}"));
    assert!(
        logged.contains(&LOW.to_string()) && logged.contains(&hard_text),
        "{logged}"
    );
}
