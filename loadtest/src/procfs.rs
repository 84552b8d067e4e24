//! A process's CPU seconds, resident memory and open files, read from Linux's `/proc`, and the
//! process listening on a TCP port (by the socket's inode: `/proc/net/tcp{,6}` gives the
//! inode of the listening socket, `/proc/<pid>/fd/*` shows which process holds it).
//!
//! The parsers are plain functions over the files' text, tested on captured text. Elsewhere
//! than Linux, or for another user's process, the reads fail and callers report the numbers as
//! unavailable instead of failing the run.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// Largest `/proc` text file read (`stat` and `status` are a few hundred bytes; `net/tcp` is
/// 150 bytes a socket, so this covers well over 100,000 sockets).
const MAX_PROC_FILE: u64 = 32 * 1024 * 1024;
/// Most processes looked at when finding a listener's owner.
const MAX_PROCESSES: usize = 100_000;

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pid(pub u32);

impl Pid {
    /// This process.
    pub fn own() -> Self {
        Self(std::process::id())
    }
}

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu_secs: f64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Open file descriptors (`None`: `/proc/<pid>/fd` is not readable, e.g. another user's
    /// process, while its CPU and memory are).
    pub open_fds: Option<u64>,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB, ", self.rss_bytes as f64 / 1_048_576.0)?;
        match self.open_fds {
            Some(n) => write!(f, "{n} fds"),
            None => write!(f, "fds unavailable"),
        }
    }
}

/// Reads `pid`'s CPU time, RSS and open descriptors now.
pub fn sample(pid: Pid) -> std::io::Result<Sample> {
    let dir = Path::new("/proc").join(pid.0.to_string());
    let stat = read(&dir.join("stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| malformed("stat"))?;
    let status = read(&dir.join("status"))?;
    let rss_bytes = parse_status_rss(&status).ok_or_else(|| malformed("status"))?;
    let open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|fds| fds.count() as u64);
    Ok(Sample {
        cpu_secs: ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
        rss_bytes,
        open_fds,
    })
}

/// A process's CPU time only (cheaper than [`sample`], and readable for any process).
pub fn cpu_time(pid: Pid) -> std::io::Result<Duration> {
    let stat = read(&Path::new("/proc").join(pid.0.to_string()).join("stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| malformed("stat"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
    ))
}

fn malformed(file: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("/proc/<pid>/{file} is not in the expected format"),
    )
}

fn read(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `utime + stime` in clock ticks from `/proc/<pid>/stat` (fields 14 and 15). The command
/// name (field 2) is in parentheses and may hold spaces and parentheses itself, so fields are
/// counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(())?;
    kib.checked_mul(1024)
}

/// The inodes of sockets listening on `port` in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let (_, local_port) = fields.get(1)?.rsplit_once(':')?;
            let listening = *fields.get(3)? == LISTEN;
            let matches = u16::from_str_radix(local_port, 16).ok()? == port;
            (listening && matches).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

/// The process holding a socket listening on TCP `port`, if it can be seen (same user, or
/// privileges); `None` when no listener or owner is visible.
pub fn listener_pid(port: u16) -> Option<Pid> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = read(Path::new(table)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let processes = std::fs::read_dir("/proc").ok()?;
    for entry in processes.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(Pid(pid));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // Captured from a dpsd process; the name is made awkward on purpose.
        let stat = "4242 (dps d) (x)) S 1 4242 4242 0 -1 4194560 2855 0 0 0 1234 567 0 0 20 0 \
                    5 0 99 1234567 890 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("1 (short) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tdpsd\nVmPeak:\t  900000 kB\nVmRSS:\t   18432 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(18432 * 1024));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_status_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn only_listening_sockets_on_the_port_are_found() {
        // 0x22B3 = 8883: one listener (0A), one established connection to it (01).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:22B3 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 777002 1 0000000000000000 20 4 30 10 -1
   2: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777003 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 8883), vec![777001]);
        assert_eq!(listening_inodes(table, 8443), vec![777003]);
        assert!(listening_inodes(table, 1883).is_empty());
        assert!(listening_inodes("header only\ngarbage line\n", 8883).is_empty());
    }

    #[test]
    fn this_process_is_found_by_its_listener_and_sampled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(Pid::own()));
        drop(listener);
        assert_eq!(listener_pid(port), None);

        let sample = sample(Pid::own()).unwrap();
        assert!(sample.rss_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.open_fds.unwrap() >= 3, "{sample:?}");
        assert!(sample.to_string().ends_with(" fds"), "{sample}");
        assert!(sample.cpu_secs >= 0.0);
        assert!(cpu_time(Pid::own()).is_ok());
    }
}
