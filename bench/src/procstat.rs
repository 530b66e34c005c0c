//! CPU time and resident memory of this process and of a watched one (`--gate-pid`), read from
//! `/proc`. Owns the parsing (sans-IO, tested on sample text) and the readings.
//!
//! CPU is `utime + stime` in clock ticks converted to seconds with `sysconf(_SC_CLK_TCK)`; a
//! figure is the difference of two readings over a wall interval (`cpu_share`). RSS is `VmRSS`
//! from `/proc/PID/status`, in bytes.

use std::time::{Duration, Instant};

/// One reading of a process's accumulated CPU time (user + system).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// CPU used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTime) -> Duration {
        self.total().saturating_sub(earlier.total())
    }
}

/// Fraction of one core used over `wall` (1.0 = one core busy the whole time).
pub fn cpu_share(used: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    used.as_secs_f64() / wall.as_secs_f64()
}

/// Parses `utime` and `stime` (fields 14 and 15) out of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<CpuTime> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm: field 3 (state) is index 0, so utime (14) is index 11, stime (15) index 12.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = ticks_per_sec.max(1);
    let to_duration = |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000 / ticks));
    Some(CpuTime {
        user: to_duration(utime),
        system: to_duration(stime),
    })
}

/// Parses `VmRSS:   1234 kB` out of `/proc/PID/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Successive CPU readings of one process, for per-second shares (progress lines).
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    proc: Proc,
    last: CpuTime,
    at: Instant,
}

impl CpuMeter {
    pub fn start(proc: Proc) -> Result<Self, String> {
        Ok(Self {
            proc,
            last: proc.cpu()?,
            at: Instant::now(),
        })
    }

    /// Share of one core used since the previous reading (or the start); `None` when the
    /// process can no longer be read.
    pub fn share_since_last(&mut self) -> Option<f64> {
        let now = Instant::now();
        let cpu = self.proc.cpu().ok()?;
        let share = cpu_share(cpu.since(self.last), now - self.at);
        self.last = cpu;
        self.at = now;
        Some(share)
    }
}

/// `" 87%"`, or `"  - "` when there is no reading.
pub fn percent(share: Option<f64>) -> String {
    match share {
        Some(s) => format!("{:>3.0}%", s * 100.0),
        None => "  - ".into(),
    }
}

/// Which process to read: this one or another by pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    SelfProcess,
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Self::SelfProcess => format!("/proc/self/{file}"),
            Self::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// Accumulated CPU time, or an error naming the file (the process is gone, or not Linux).
    pub fn cpu(self) -> Result<CpuTime, String> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        parse_stat(&text, ticks_per_sec()).ok_or_else(|| format!("{path}: unexpected format"))
    }

    /// Resident set size in bytes.
    pub fn rss(self) -> Result<u64, String> {
        let path = self.path("status");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        parse_rss(&text).ok_or_else(|| format!("{path}: no VmRSS line"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (ga te) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 75 0 0 20 0 3 0 12345 100000000 2500 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let cpu = parse_stat(STAT, 100).expect("parses");
        assert_eq!(cpu.user, Duration::from_millis(2500));
        assert_eq!(cpu.system, Duration::from_millis(750));
        assert_eq!(cpu.total(), Duration::from_millis(3250));
    }

    #[test]
    fn truncated_stat_is_refused() {
        assert_eq!(parse_stat("4242 (gate) S 1 2 3", 100), None);
        assert_eq!(parse_stat("no parenthesis", 100), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tgate\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(status), Some(2048 * 1024));
        assert_eq!(parse_rss("Name:\tgate\n"), None);
    }

    #[test]
    fn cpu_share_is_cpu_over_wall() {
        let earlier = CpuTime {
            user: Duration::from_millis(100),
            system: Duration::ZERO,
        };
        let later = CpuTime {
            user: Duration::from_millis(400),
            system: Duration::from_millis(200),
        };
        let used = later.since(earlier);
        assert_eq!(used, Duration::from_millis(500));
        assert!((cpu_share(used, Duration::from_secs(1)) - 0.5).abs() < 1e-9);
        assert_eq!(cpu_share(used, Duration::ZERO), 0.0);
    }

    #[test]
    fn this_process_can_be_read() {
        let cpu = Proc::SelfProcess.cpu().expect("own stat");
        let rss = Proc::SelfProcess.rss().expect("own status");
        assert!(rss > 0);
        assert!(cpu.total() < Duration::from_secs(24 * 3600));
        assert!(Proc::Pid(u32::MAX).cpu().is_err());
    }
}
