//! Doctor checks against fake hosts: a host tuned with `tuning/` passes, and each check fails
//! (or warns) when its one input is off.

use std::path::PathBuf;

use super::*;

const TUNING: &str = include_str!("../../../tuning/99-imgate.conf");

/// The sysctls of the tuning file, as a tuned host shows them (leading `-` dropped), plus the
/// two file-descriptor ceilings the file leaves to systemd's boot-time bump.
fn tuned_sysctls() -> BTreeMap<&'static str, String> {
    let mut map = BTreeMap::new();
    for line in TUNING.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let key = key.trim().trim_start_matches('-');
        if let Some(&name) = SYSCTLS.iter().find(|&&n| n == key) {
            map.insert(name, value.trim().to_string());
        }
    }
    map.insert("fs.nr_open", "1073741816".into());
    map.insert("fs.file-max", "9223372036854775807".into());
    map
}

fn tuned_host() -> Host {
    Host {
        nofile: Some(Limit {
            soft: Some(1_048_576),
            hard: Some(1_048_576),
        }),
        memlock: Some(Limit {
            soft: None,
            hard: None,
        }),
        cores: Some(8),
        kernel: Some("6.1.0-18-amd64".into()),
        io_uring_disabled: Some(0),
        io_uring_probe: Some(Ok(())),
        page_size: 4096,
        sysctls: tuned_sysctls(),
    }
}

/// Settings from `toml`, without the host-dependent adjustments `validate` made.
fn settings(toml: &str) -> Settings {
    let mut s = Config::from_toml(toml)
        .expect("parses")
        .validate()
        .expect("valid");
    s.warnings.clear();
    s
}

fn million() -> Settings {
    settings("[gate]\nshards = 7\n[limits]\nmax_connections = 1000000\n")
}

fn level(findings: &[Finding], check: &str) -> Option<Level> {
    findings.iter().find(|f| f.check == check).map(|f| f.level)
}

fn worst(findings: &[Finding]) -> Level {
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

#[test]
fn tuned_host_passes_every_check_for_a_million_connections() {
    let findings = check(&tuned_host(), &million());
    let not_ok: Vec<String> = findings
        .iter()
        .filter(|f| f.level != Level::Ok)
        .map(|f| f.to_string())
        .collect();
    assert!(not_ok.is_empty(), "{not_ok:#?}");
    assert_eq!(
        level(&findings, "net.netfilter.nf_conntrack_max"),
        Some(Level::Ok)
    );
}

#[test]
fn open_file_limit_below_max_connections_fails() {
    let mut host = tuned_host();
    host.nofile = Some(Limit {
        soft: Some(20_000),
        hard: Some(1_048_576),
    });
    let findings = check(&host, &million());
    assert_eq!(level(&findings, "open files"), Some(Level::Fail));
    let line = findings
        .iter()
        .find(|f| f.check == "open files")
        .expect("open files")
        .to_string();
    assert!(line.starts_with("FAIL open files:"), "{line}");
    assert!(line.contains("LimitNOFILE"), "{line}");
    // The same limit with a small configured capacity is fine.
    let small = settings("[gate]\nshards = 1\n[limits]\nmax_connections = 1000\n");
    assert_eq!(level(&check(&host, &small), "open files"), Some(Level::Ok));
}

#[test]
fn unset_max_connections_with_a_low_limit_only_warns() {
    let mut host = tuned_host();
    host.nofile = Some(Limit {
        soft: Some(20_000),
        hard: Some(20_000),
    });
    let s = settings("[gate]\nshards = 2\n");
    let findings = check(&host, &s);
    assert_eq!(level(&findings, "open files"), Some(Level::Warn));
    assert_eq!(worst(&findings), Level::Warn);
}

#[test]
fn memlock_below_what_the_shards_pin_fails() {
    let mut host = tuned_host();
    // 7 shards x 3 x 64 KiB = 1344 KiB.
    host.memlock = Some(Limit {
        soft: Some(1024 * 1024),
        hard: Some(1024 * 1024),
    });
    assert_eq!(
        level(&check(&host, &million()), "memlock"),
        Some(Level::Fail)
    );
    host.memlock = Some(Limit {
        soft: Some(1344 * 1024),
        hard: Some(1344 * 1024),
    });
    assert_eq!(level(&check(&host, &million()), "memlock"), Some(Level::Ok));
}

#[test]
fn io_uring_switched_off_or_refused_fails() {
    let mut host = tuned_host();
    host.io_uring_disabled = Some(2);
    assert_eq!(
        level(&check(&host, &million()), "io_uring"),
        Some(Level::Fail)
    );
    host.io_uring_disabled = Some(1);
    assert_eq!(
        level(&check(&host, &million()), "io_uring"),
        Some(Level::Warn)
    );
    host.io_uring_disabled = None;
    assert_eq!(
        level(&check(&host, &million()), "io_uring"),
        Some(Level::Ok)
    );
    host.io_uring_probe = Some(Err("Operation not permitted (os error 1)".into()));
    assert_eq!(
        level(&check(&host, &million()), "io_uring probe"),
        Some(Level::Fail)
    );
    host.io_uring_probe = None;
    assert_eq!(level(&check(&host, &million()), "io_uring probe"), None);
}

#[test]
fn kernel_older_than_glommio_needs_fails() {
    let mut host = tuned_host();
    host.kernel = Some("5.4.0-150-generic".into());
    assert_eq!(
        level(&check(&host, &million()), "kernel"),
        Some(Level::Fail)
    );
    host.kernel = Some("5.8.0".into());
    assert_eq!(level(&check(&host, &million()), "kernel"), Some(Level::Ok));
    host.kernel = Some("garbage".into());
    assert_eq!(
        level(&check(&host, &million()), "kernel"),
        Some(Level::Warn)
    );
}

#[test]
fn kernels_before_5_19_warn_that_completions_interrupt_the_shard() {
    let mut host = tuned_host();
    let findings = |host: &Host| level(&check(host, &million()), "io_uring completions");
    for (release, want) in [
        ("5.15.0-91-generic", Some(Level::Warn)),
        ("5.18.19", Some(Level::Warn)),
        ("5.19.0", Some(Level::Ok)),
        ("6.1.0-18-amd64", Some(Level::Ok)),
        // Too old to run at all (the kernel check fails) or unreadable: nothing to add.
        ("5.4.0", None),
        ("garbage", None),
    ] {
        host.kernel = Some(release.into());
        assert_eq!(findings(&host), want, "{release}");
    }
}

#[test]
fn more_shards_than_cores_or_every_core_warns() {
    let mut host = tuned_host();
    host.cores = Some(4);
    assert_eq!(level(&check(&host, &million()), "cores"), Some(Level::Warn));
    host.cores = Some(7);
    assert_eq!(level(&check(&host, &million()), "cores"), Some(Level::Warn));
    host.cores = Some(2);
    let two = settings("[gate]\nshards = 2\n[limits]\nmax_connections = 1000\n");
    assert_eq!(level(&check(&host, &two), "cores"), Some(Level::Ok));
}

#[test]
fn descriptor_ceilings_below_capacity_fail() {
    for name in ["fs.nr_open", "fs.file-max"] {
        let mut host = tuned_host();
        host.sysctls.insert(name, "1048576".into());
        // 1,000,000 connections + 64 + 16 x 7 reserve fit in 1048576.
        assert_eq!(level(&check(&host, &million()), name), Some(Level::Ok));
        host.sysctls.insert(name, "1000000".into());
        assert_eq!(
            level(&check(&host, &million()), name),
            Some(Level::Fail),
            "{name}"
        );
    }
}

#[test]
fn a_full_conntrack_table_fails_and_no_conntrack_is_fine() {
    let mut host = tuned_host();
    host.sysctls
        .insert("net.netfilter.nf_conntrack_max", "262144".into());
    assert_eq!(
        level(&check(&host, &million()), "net.netfilter.nf_conntrack_max"),
        Some(Level::Fail)
    );
    host.sysctls.remove("net.netfilter.nf_conntrack_max");
    let findings = check(&host, &million());
    assert_eq!(level(&findings, "net.netfilter.nf_conntrack_max"), None);
    assert_eq!(worst(&findings), Level::Ok);
}

#[test]
fn untuned_network_sysctls_warn() {
    for (name, untuned) in [
        ("net.core.somaxconn", "4095"),
        ("net.ipv4.tcp_max_syn_backlog", "1024"),
        ("net.core.netdev_max_backlog", "1000"),
        ("net.ipv4.tcp_mem", "287901 383869 575802"),
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_slow_start_after_idle", "1"),
    ] {
        let mut host = tuned_host();
        host.sysctls.insert(name, untuned.into());
        let findings = check(&host, &million());
        assert_eq!(level(&findings, name), Some(Level::Warn), "{name}");
        assert_eq!(worst(&findings), Level::Warn, "{name} alone is no failure");
        host.sysctls.remove(name);
        assert_eq!(
            level(&check(&host, &million()), name),
            Some(Level::Warn),
            "{name} unreadable"
        );
    }
}

#[test]
fn config_warnings_are_reported() {
    let mut s = million();
    s.warnings.push("limits.max_connections clamped".into());
    let findings = check(&tuned_host(), &s);
    assert_eq!(level(&findings, "config"), Some(Level::Warn));
}

#[test]
fn limits_and_cores_parse_from_proc_text() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max locked memory         8388608              unlimited            bytes     \n\
                  Max open files            1024                 524288               files     \n";
    assert_eq!(
        parse_limit(limits, "Max open files"),
        Some(Limit {
            soft: Some(1024),
            hard: Some(524_288)
        })
    );
    assert_eq!(
        parse_limit(limits, "Max locked memory"),
        Some(Limit {
            soft: Some(8_388_608),
            hard: None
        })
    );
    assert_eq!(parse_limit(limits, "Max processes"), None);
    assert_eq!(
        parse_limit("Max open files  lots  1", "Max open files"),
        None
    );
    assert_eq!(
        parse_cores("Name:\tgate\nCpus_allowed_list:\t0-3,8,10-11\n"),
        Some(7)
    );
    assert_eq!(parse_cores("Cpus_allowed_list:\t0\n"), Some(1));
    assert_eq!(parse_cores("Cpus_allowed_list:\t3-1\n"), None);
    assert_eq!(parse_cores("Cpus_allowed_list:\t\n"), None);
    assert_eq!(parse_cores("Name:\tgate\n"), None);
}

/// A fake root under `std::env::temp_dir()`, removed on drop.
struct FakeRoot(PathBuf);

impl FakeRoot {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("imgate-doctor-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// A host tuned for a million connections, as files.
    fn tuned(name: &str) -> Self {
        let root = Self::new(name);
        root.write(
            "proc/self/limits",
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max locked memory         unlimited            unlimited            bytes     \n\
             Max open files            1048576              1048576              files     \n",
        );
        root.write("proc/self/status", "Name:\tgate\nCpus_allowed_list:\t0-7\n");
        root.write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        root.write("proc/sys/kernel/io_uring_disabled", "0\n");
        for (name, value) in tuned_sysctls() {
            root.write(
                &format!("proc/sys/{}", name.replace('.', "/")),
                &format!("{}\n", value.replace(' ', "\t")),
            );
        }
        root
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn host_reads_its_snapshot_from_a_root_tree() {
    let root = FakeRoot::tuned("read");
    let mut host = Host::read(&root.0, false);
    assert_eq!(host.io_uring_probe, None);
    host.page_size = 4096;
    host.io_uring_probe = Some(Ok(()));
    assert_eq!(host, tuned_host());
}

#[test]
fn missing_files_are_findings_not_panics() {
    let root = FakeRoot::new("empty");
    let host = Host::read(&root.0, false);
    let findings = check(&host, &million());
    assert_eq!(level(&findings, "open files"), Some(Level::Warn));
    assert_eq!(level(&findings, "memlock"), Some(Level::Warn));
    assert_eq!(level(&findings, "cores"), Some(Level::Warn));
    assert_eq!(level(&findings, "fs.nr_open"), Some(Level::Warn));
}

#[test]
fn diagnose_fails_an_invalid_config_and_passes_a_tuned_tree() {
    let root = FakeRoot::tuned("diagnose");
    let bad = Config::from_toml("[gate]\nio_memory_kib = 4\n");
    let findings = diagnose(bad, "gate.toml", &root.0, false);
    assert_eq!(findings.len(), 1);
    assert!(
        findings[0]
            .to_string()
            .starts_with("FAIL config: gate.toml: gate.io_memory_kib"),
        "{}",
        findings[0]
    );
    let good = Config::from_toml("[gate]\nshards = 2\n[limits]\nmax_connections = 1000\n");
    let findings = diagnose(good, "gate.toml", &root.0, false);
    assert_eq!(level(&findings, "config"), Some(Level::Ok));
    assert_eq!(worst(&findings), Level::Ok, "{findings:#?}");
}
