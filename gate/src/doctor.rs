//! `gate doctor`: does this host let the gate reach the capacity its configuration asks for?
//!
//! Sans-IO around one read: [`Host::read`] takes a snapshot of what matters (this process's
//! open-file and memlock limits and allowed cores from `/proc/self`, the kernel release, the
//! io_uring switch and the sysctls of `tuning/99-imgate.conf` from `/proc/sys`) under a root path,
//! so tests point it at a fake tree; [`check`] is a pure function of that snapshot and the
//! validated [`Settings`], returning one [`Finding`] per check. The only other IO is the
//! optional real `io_uring_setup` probe ([`probe_io_uring`]). Never changes the host.
//!
//! A finding is `Fail` when the gate would not reach its configured capacity (or not start);
//! `Warn` when it would run below what the tuning files aim for; the binary exits 1 on any
//! `Fail`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::config::{Config, ConfigError, Settings, fd_reserve};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result: the check's name and what was found (with what to change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level:<4} {}: {}", self.check, self.message)
    }
}

fn finding(level: Level, check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        level,
        check,
        message: message.into(),
    }
}

/// A resource limit; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What `check` looks at, read once. `None` fields could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `RLIMIT_NOFILE` of this process.
    pub nofile: Option<Limit>,
    /// `RLIMIT_MEMLOCK` of this process, bytes.
    pub memlock: Option<Limit>,
    /// CPUs this process may run on (its `sched_getaffinity` mask, `Cpus_allowed_list`).
    pub cores: Option<usize>,
    /// `kernel.osrelease`, e.g. `6.1.0-18-amd64`.
    pub kernel: Option<String>,
    /// `kernel.io_uring_disabled`; `None` on kernels without the switch (before 6.6): enabled.
    pub io_uring_disabled: Option<u32>,
    /// Result of a real `io_uring_setup`; `None` when not probed (fake trees).
    pub io_uring_probe: Option<Result<(), String>>,
    /// Bytes per page (`tcp_mem` counts pages).
    pub page_size: u64,
    /// Values of [`SYSCTLS`] that exist on this host, by dotted name.
    pub sysctls: BTreeMap<&'static str, String>,
}

/// The sysctls `check` reads (those of `tuning/99-imgate.conf` that bear on capacity).
pub const SYSCTLS: &[&str] = &[
    "fs.nr_open",
    "fs.file-max",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.netfilter.nf_conntrack_max",
];

/// `net.core.netdev_max_backlog` of the tuning file.
const TUNED_NETDEV_BACKLOG: u64 = 16_384;
/// Socket buffer memory `tcp_mem` should allow per connection: one small burst in flight each.
const TCP_MEM_PER_CONNECTION: u64 = 4096;
/// glommio's oldest supported kernel.
const MIN_KERNEL: (u32, u32) = (5, 8);
/// The kernel that accepts `IORING_SETUP_COOP_TASKRUN` (older ones: an IPI per completion).
const COOP_TASKRUN_KERNEL: (u32, u32) = (5, 19);
/// What the appliance is built for; a `max_connections = 0` capacity below it gets a warning.
const DESIGN_CONNECTIONS: u64 = 1_000_000;
/// glommio pins `io_memory` this many times per executor.
const IO_MEMORY_PINS: u64 = 3;

impl Host {
    /// Reads the snapshot from the tree under `root` (`/` for this host); `probe` also tries a
    /// real `io_uring_setup` (only meaningful with the real `/`).
    pub fn read(root: &Path, probe: bool) -> Host {
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let limits = read("proc/self/limits");
        let sysctl = |name: &str| read(&format!("proc/sys/{}", name.replace('.', "/")));
        let mut sysctls = BTreeMap::new();
        for &name in SYSCTLS {
            if let Some(value) = sysctl(name) {
                // Multi-value sysctls are tab-separated; keep one space between values.
                sysctls.insert(name, value.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        // SAFETY: sysconf with a constant name has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Host {
            nofile: limits
                .as_deref()
                .and_then(|l| parse_limit(l, "Max open files")),
            memlock: limits
                .as_deref()
                .and_then(|l| parse_limit(l, "Max locked memory")),
            cores: read("proc/self/status").and_then(|s| parse_cores(&s)),
            kernel: sysctl("kernel.osrelease").map(|s| s.trim().to_string()),
            io_uring_disabled: sysctl("kernel.io_uring_disabled")
                .and_then(|s| s.trim().parse().ok()),
            io_uring_probe: probe.then(probe_io_uring),
            page_size: u64::try_from(page_size)
                .ok()
                .filter(|&p| p > 0)
                .unwrap_or(4096),
            sysctls,
        }
    }

    fn sysctl_u64(&self, name: &str) -> Option<u64> {
        self.sysctls
            .get(name)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// One limit from `/proc/self/limits` (`Max open files  1024  524288  files`).
pub fn parse_limit(limits: &str, name: &str) -> Option<Limit> {
    let rest = limits.lines().find_map(|line| line.strip_prefix(name))?;
    let mut values = rest.split_whitespace().map(|v| match v {
        "unlimited" => Some(None),
        v => v.parse::<u64>().ok().map(Some),
    });
    Some(Limit {
        soft: values.next()??,
        hard: values.next()??,
    })
}

/// The number of CPUs in `/proc/self/status`'s `Cpus_allowed_list` (`0-3,8,10-11`).
pub fn parse_cores(status: &str) -> Option<usize> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut count = 0usize;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (count > 0).then_some(count)
}

/// `major.minor` of a kernel release string.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Creates and closes a small io_uring, as the shards will: tells whether the kernel, a seccomp
/// filter, a container runtime or `kernel.io_uring_disabled` refuses it to this process.
pub fn probe_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; all zero asks for the defaults.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes one io_uring_params, which `params` is in size and
    // alignment; the returned fd, if any, is ours and closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is the ring's descriptor we own; it fits a c_int as every fd does.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Every host check for `settings`, in a fixed order.
pub fn check(host: &Host, s: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    let shards = s.shards.get() as u64;
    let reserve = fd_reserve(s.shards.get(), s.log_fds()) as u64;
    let configured = s.limits.max_connections as u64;

    // Open files: the connections the gate can hold at all.
    let capacity = match host.nofile {
        None => {
            out.push(finding(
                Level::Warn,
                "open files",
                "could not read this process's RLIMIT_NOFILE (/proc/self/limits)",
            ));
            configured
        }
        Some(Limit { soft: None, .. }) => {
            out.push(finding(Level::Ok, "open files", "unlimited"));
            configured.max(DESIGN_CONNECTIONS)
        }
        Some(Limit {
            soft: Some(soft),
            hard,
        }) => {
            let allowed = soft.saturating_sub(reserve);
            let hard = hard.map_or("unlimited".to_string(), |h| h.to_string());
            if configured > 0 && allowed < configured {
                out.push(finding(
                    Level::Fail,
                    "open files",
                    format!(
                        "soft limit {soft} (hard {hard}) leaves room for {allowed} connections, below limits.max_connections = {configured}; \
                         raise LimitNOFILE= (or ulimit -n) to at least {} (tuning/imgate-limits.conf)",
                        configured + reserve
                    ),
                ));
            } else if configured == 0 && allowed < DESIGN_CONNECTIONS {
                out.push(finding(
                    Level::Warn,
                    "open files",
                    format!(
                        "limits.max_connections = 0: capacity is {allowed} connections, set by the soft limit {soft} (hard {hard}); \
                         LimitNOFILE=1048576 (systemd/imgate-gate.service) allows a million"
                    ),
                ));
            } else {
                out.push(finding(
                    Level::Ok,
                    "open files",
                    format!(
                        "soft limit {soft} (hard {hard}) leaves room for {allowed} connections"
                    ),
                ));
            }
            if configured > 0 { configured } else { allowed }
        }
    };
    let fds_needed = capacity + reserve;

    // Memlock: glommio pins io_memory three times per shard; all of this user's processes share it.
    let needed = IO_MEMORY_PINS * s.io_memory as u64 * shards;
    match host.memlock {
        None => out.push(finding(Level::Warn, "memlock", "could not read RLIMIT_MEMLOCK")),
        Some(Limit { soft: None, .. }) => out.push(finding(Level::Ok, "memlock", "unlimited")),
        Some(Limit { soft: Some(soft), .. }) if soft < needed => out.push(finding(
            Level::Fail,
            "memlock",
            format!(
                "limit {} KiB < 3 x gate.io_memory_kib x {shards} shards = {} KiB (shared by all of this user's processes); \
                 set LimitMEMLOCK=infinity (or raise ulimit -l) or lower gate.io_memory_kib",
                soft / 1024,
                needed / 1024
            ),
        )),
        Some(Limit { soft: Some(soft), .. }) => out.push(finding(
            Level::Ok,
            "memlock",
            format!("limit {} KiB >= {} KiB the shards pin", soft / 1024, needed / 1024),
        )),
    }

    // Kernel and io_uring.
    match host.kernel.as_deref().map(|r| (r, kernel_version(r))) {
        Some((release, Some(v))) if v < MIN_KERNEL => out.push(finding(
            Level::Fail,
            "kernel",
            format!("{release} is older than 5.8, the oldest glommio runs on"),
        )),
        Some((release, Some(_))) => out.push(finding(Level::Ok, "kernel", release.to_string())),
        _ => out.push(finding(
            Level::Warn,
            "kernel",
            "could not read kernel.osrelease",
        )),
    }
    // The vendored glommio asks for IORING_SETUP_COOP_TASKRUN (vendor/glommio/IMGATE.md).
    match host.kernel.as_deref().and_then(kernel_version) {
        Some(v) if v >= MIN_KERNEL && v < COOP_TASKRUN_KERNEL => out.push(finding(
            Level::Warn,
            "io_uring completions",
            "kernel older than 5.19: every io_uring completion interrupts a busy shard's core (an IPI each; \
             tens of thousands per second per shard at full load); 5.19 lets them wait for the shard's next syscall",
        )),
        Some(v) if v >= COOP_TASKRUN_KERNEL => out.push(finding(
            Level::Ok,
            "io_uring completions",
            "posted at the shard's next syscall (IORING_SETUP_COOP_TASKRUN), no IPI each",
        )),
        _ => {}
    }
    match host.io_uring_disabled {
        Some(2) => out.push(finding(
            Level::Fail,
            "io_uring",
            "kernel.io_uring_disabled = 2: io_uring is off for every process; set it to 0",
        )),
        Some(1) => out.push(finding(
            Level::Warn,
            "io_uring",
            "kernel.io_uring_disabled = 1: only root and members of kernel.io_uring_group may use io_uring; set it to 0 or add the imgate group",
        )),
        Some(_) => out.push(finding(Level::Ok, "io_uring", "kernel.io_uring_disabled = 0")),
        None => out.push(finding(Level::Ok, "io_uring", "no kernel.io_uring_disabled switch (enabled)")),
    }
    match &host.io_uring_probe {
        Some(Ok(())) => out.push(finding(Level::Ok, "io_uring probe", "io_uring_setup works for this process")),
        Some(Err(err)) => out.push(finding(
            Level::Fail,
            "io_uring probe",
            format!(
                "io_uring_setup failed ({err}): a seccomp filter (containers' default profile; SystemCallFilter= without io_uring_*), \
                 kernel.io_uring_disabled, or a kernel without io_uring"
            ),
        )),
        None => {}
    }

    // Cores: one shard per core, pinned.
    match host.cores {
        None => out.push(finding(Level::Warn, "cores", "could not read this process's CPU affinity")),
        Some(cores) if shards > cores as u64 => out.push(finding(
            Level::Warn,
            "cores",
            format!("gate.shards = {shards} on {cores} allowed cores: shards share cores; set gate.shards <= {cores}"),
        )),
        Some(cores) if shards == cores as u64 && cores > 2 => out.push(finding(
            Level::Warn,
            "cores",
            format!(
                "gate.shards = {shards} takes every allowed core; leave one for network interrupts (gate.shards = {}, tuning/README.md)",
                cores - 1
            ),
        )),
        Some(cores) => out.push(finding(Level::Ok, "cores", format!("gate.shards = {shards} on {cores} allowed cores"))),
    }

    // Sysctls (tuning/99-imgate.conf).
    let at_least =
        |out: &mut Vec<Finding>, name: &'static str, min: u64, level: Level, why: &str| match host
            .sysctl_u64(name)
        {
            Some(v) if v >= min => out.push(finding(Level::Ok, name, format!("{v}"))),
            Some(v) => out.push(finding(level, name, format!("{v} < {min}: {why}"))),
            None if name == "net.netfilter.nf_conntrack_max" => {}
            None => out.push(finding(Level::Warn, name, "could not read it")),
        };
    at_least(
        &mut out,
        "fs.nr_open",
        fds_needed,
        Level::Fail,
        "no process may have more open files than this; raise it (tuning/99-imgate.conf)",
    );
    at_least(
        &mut out,
        "fs.file-max",
        fds_needed,
        Level::Fail,
        "open files of the whole host; raise it (tuning/99-imgate.conf)",
    );
    at_least(
        &mut out,
        "net.netfilter.nf_conntrack_max",
        capacity,
        Level::Fail,
        "connection tracking is on and its table would drop new connections; raise it or exempt the gate's port (NOTRACK)",
    );
    let backlog = u64::from(s.listen_backlog);
    at_least(
        &mut out,
        "net.core.somaxconn",
        backlog,
        Level::Warn,
        "caps gate.listen_backlog; reconnect storms overflow the accept queue",
    );
    at_least(
        &mut out,
        "net.ipv4.tcp_max_syn_backlog",
        backlog,
        Level::Warn,
        "half-open connections queued per listener; reconnect storms fall back to SYN cookies or drops",
    );
    at_least(
        &mut out,
        "net.core.netdev_max_backlog",
        TUNED_NETDEV_BACKLOG,
        Level::Warn,
        "packets queued per core between the NIC and TCP; bursts beyond it are dropped",
    );
    match host.sysctls.get("net.ipv4.tcp_mem").map(|v| {
        v.split_whitespace()
            .nth(2)
            .and_then(|p| p.parse::<u64>().ok())
    }) {
        Some(Some(pages)) => {
            let want = capacity.saturating_mul(TCP_MEM_PER_CONNECTION);
            let have = pages.saturating_mul(host.page_size);
            if have < want {
                out.push(finding(
                    Level::Warn,
                    "net.ipv4.tcp_mem",
                    format!(
                        "its maximum allows {} MiB of socket buffers, {} bytes per connection for {capacity}; below {TCP_MEM_PER_CONNECTION} a broadcast can hit TCP memory pressure (tuning/99-imgate.conf)",
                        have >> 20,
                        have / capacity.max(1)
                    ),
                ));
            } else {
                out.push(finding(
                    Level::Ok,
                    "net.ipv4.tcp_mem",
                    format!("maximum {} MiB", have >> 20),
                ));
            }
        }
        _ => out.push(finding(
            Level::Warn,
            "net.ipv4.tcp_mem",
            "could not read it",
        )),
    }
    match host.sysctl_u64("net.ipv4.tcp_fin_timeout") {
        Some(v) if v > 30 => out.push(finding(
            Level::Warn,
            "net.ipv4.tcp_fin_timeout",
            format!("{v} s: sockets of closed connections linger in FIN_WAIT_2; 15 is enough"),
        )),
        Some(v) => out.push(finding(
            Level::Ok,
            "net.ipv4.tcp_fin_timeout",
            format!("{v} s"),
        )),
        None => out.push(finding(
            Level::Warn,
            "net.ipv4.tcp_fin_timeout",
            "could not read it",
        )),
    }
    match host.sysctl_u64("net.ipv4.tcp_slow_start_after_idle") {
        Some(0) => out.push(finding(Level::Ok, "net.ipv4.tcp_slow_start_after_idle", "0")),
        Some(v) => out.push(finding(
            Level::Warn,
            "net.ipv4.tcp_slow_start_after_idle",
            format!("{v}: an idle connection restarts from a small window, delaying the first burst after a lull; set 0"),
        )),
        None => out.push(finding(Level::Warn, "net.ipv4.tcp_slow_start_after_idle", "could not read it")),
    }

    for warning in &s.warnings {
        out.push(finding(Level::Warn, "config", warning.clone()));
    }
    out
}

/// The whole doctor: the configuration's validity, then the host checks under `root`.
pub fn diagnose(
    config: Result<Config, ConfigError>,
    source: &str,
    root: &Path,
    probe: bool,
) -> Vec<Finding> {
    match config.and_then(|c| c.validate()) {
        Err(err) => vec![finding(Level::Fail, "config", format!("{source}: {err}"))],
        Ok(settings) => {
            let mut out = vec![finding(
                Level::Ok,
                "config",
                format!(
                    "{source}: valid (shards = {}, limits.max_connections = {})",
                    settings.shards, settings.limits.max_connections
                ),
            )];
            out.extend(check(&Host::read(root, probe), &settings));
            out
        }
    }
}

#[cfg(test)]
mod tests;
