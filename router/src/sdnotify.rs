//! A tiny `sd_notify(3)`: tells systemd (a `Type=notify` unit) that the service is ready, is
//! stopping, or is still alive (watchdog), over the datagram socket named by `NOTIFY_SOCKET`.
//!
//! Owns no state: every call reads the environment and sends one datagram from a fresh unbound
//! socket. Every function is a no-op returning `Ok(false)` when `NOTIFY_SOCKET` is unset (not run
//! by systemd), so the binaries call them unconditionally. Pure std; the environment readers are
//! split from pure parsers (`socket_addr`, `watchdog_interval_from`) so tests never set variables.
//! Lives in the router crate because both binaries use it (the gate re-exports it as
//! `gate::sdnotify`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variable systemd sets to the notification socket's address.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// `READY=1`: start-up is finished (every listener is accepting).
pub fn ready() -> io::Result<bool> {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()))
}

/// `STOPPING=1`: the service is shutting down (draining).
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: the service is alive; due at least every [`watchdog_interval`].
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`. `Ok(false)`
/// when the variable is unset or empty: nobody listens.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(path) if !path.is_empty() => {
            let path = path.to_str().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(path, state).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the socket named `socket` (a path, or `@name` for the abstract namespace).
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

/// The address `NOTIFY_SOCKET` names: an absolute path, or `@name` in Linux's abstract
/// namespace. Other forms (systemd's `vsock:`) are refused as unsupported.
pub fn socket_addr(socket: &str) -> io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket)
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("NOTIFY_SOCKET {socket:?} is neither a path nor an @abstract name"),
        ))
    }
}

/// How often systemd expects `WATCHDOG=1` (`WatchdogSec=` in the unit), from `WATCHDOG_USEC`;
/// `None` when no watchdog is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from the variables' values: `WATCHDOG_USEC` must be a positive number
/// of microseconds, and `WATCHDOG_PID`, when set, must be `my_pid` (the watchdog is for the main
/// process, not for a child that inherited the environment).
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(my_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts a thread that sends `WATCHDOG=1` every half [`watchdog_interval`], for the life of the
/// process; does nothing without a watchdog. `name` goes in the log.
///
/// This only proves the process is scheduled and not wedged as a whole; pinging only while every
/// shard (or the router's executor) answers comes with the admin/metrics piece of issue 10.
pub fn spawn_watchdog(name: &'static str) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-watchdog"))
        .spawn(move || {
            loop {
                if let Err(err) = watchdog() {
                    tracing::warn!(%err, "could not send WATCHDOG=1 to systemd");
                }
                std::thread::sleep(period);
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "could not start the systemd watchdog thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A temp dir under `std::env::temp_dir()`, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("imgate-sdnotify-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set deadline");
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a datagram within the deadline");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    #[test]
    fn state_arrives_on_a_path_socket() {
        let dir = TempDir::new("path");
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.to_str().expect("UTF-8 path"), "READY=1").expect("sent");
        assert_eq!(receive(&sock), "READY=1");
        notify_to(path.to_str().expect("UTF-8 path"), "WATCHDOG=1").expect("sent");
        assert_eq!(receive(&sock), "WATCHDOG=1");
    }

    #[test]
    fn state_arrives_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("imgate-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        notify_to(&format!("@{name}"), "STOPPING=1").expect("sent");
        assert_eq!(receive(&sock), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("nobody.sock");
        assert!(notify_to(path.to_str().expect("UTF-8 path"), "READY=1").is_err());
        assert!(notify_to("relative.sock", "READY=1").is_err());
        assert!(notify_to("vsock:2:1234", "READY=1").is_err());
    }

    #[test]
    fn watchdog_interval_needs_usec_and_our_pid() {
        let us = Some("30000000");
        assert_eq!(
            watchdog_interval_from(us, None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(us, Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval_from(us, Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(us, Some("x"), 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("-5"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }
}

/// A harness for the binaries' tests (`gate/tests/systemd_notify.rs`,
/// `router/tests/systemd_notify.rs`): starts `binary --config` with `config` under a fake
/// systemd (a real datagram socket named by NOTIFY_SOCKET, WATCHDOG_USEC = 200 ms) and checks
/// the lifecycle: READY=1 with MAINPID, two WATCHDOG=1, STOPPING=1 after SIGTERM, exit 0. Every
/// wait has a deadline; a failure panics with the child's stderr.
#[doc(hidden)]
pub mod testkit {
    use std::os::unix::net::UnixDatagram;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const DEADLINE: Duration = Duration::from_secs(30);

    /// Kills the child if the test ends early; keeps the path of its stderr file.
    struct Running(Child, PathBuf);

    impl Running {
        fn stderr(&self) -> String {
            std::fs::read_to_string(&self.1).unwrap_or_default()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The next datagram, or a panic (with the child's stderr) at the deadline or when the child
    /// exits first.
    fn next(sock: &UnixDatagram, child: &mut Running, until: Instant) -> String {
        let mut buf = [0u8; 512];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no notification before the deadline; stderr:\n{}",
                    child.stderr()
                );
            }
            sock.set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set timeout");
            match sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(status) = child.0.try_wait().expect("wait") {
                        panic!(
                            "exited ({status}) before notifying; stderr:\n{}",
                            child.stderr()
                        );
                    }
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Runs the lifecycle check of `binary` (named `name` in messages) with `config`.
    pub fn notify_lifecycle(binary: &Path, name: &str, config: &str) {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("imgate-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&socket).expect("bind the notify socket");
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = dir.join("stderr");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("create the stderr file"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name}: {e}"));
        let mut running = Running(child, stderr);
        let pid = running.0.id();
        let until = Instant::now() + DEADLINE;

        let ready = next(&sock, &mut running, until);
        assert_eq!(ready, format!("READY=1\nMAINPID={pid}"));
        assert_eq!(next(&sock, &mut running, until), "WATCHDOG=1");
        assert_eq!(next(&sock, &mut running, until), "WATCHDOG=1");

        // SAFETY: kill with the pid of our own child and a constant signal.
        let pid_t = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        assert_eq!(unsafe { libc::kill(pid_t, libc::SIGTERM) }, 0);
        loop {
            match next(&sock, &mut running, until).as_str() {
                "WATCHDOG=1" => continue,
                "STOPPING=1" => break,
                other => panic!("unexpected notification {other:?}"),
            }
        }
        loop {
            if let Some(status) = running.0.try_wait().expect("wait") {
                assert!(status.success(), "{status}");
                break;
            }
            assert!(
                Instant::now() < until,
                "the {name} did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(running);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
