//! The `gate` binary speaks to systemd (a `Type=notify` unit): READY=1 once every shard
//! accepts, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 at SIGTERM, over a real datagram
//! socket named by NOTIFY_SOCKET. Every wait has a deadline.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
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

#[test]
fn gate_notifies_ready_watchdog_and_stopping() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("imgate-notify-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&socket).expect("bind the notify socket");
    let config = dir.join("gate.toml");
    std::fs::write(
        &config,
        "[gate]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[admin]\nlisten = \"\"\n[backend]\ndata_dir = \"\"\n[log]\nlevel = \"warn\"\n",
    )
    .expect("write config");
    let stderr = dir.join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_gate"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&stderr).expect("create the stderr file"),
        ))
        .spawn()
        .expect("start the gate");
    let mut gate = Running(child, stderr);
    let pid = gate.0.id();
    let until = Instant::now() + DEADLINE;

    let ready = next(&sock, &mut gate, until);
    assert_eq!(ready, format!("READY=1\nMAINPID={pid}"));
    assert_eq!(next(&sock, &mut gate, until), "WATCHDOG=1");
    assert_eq!(next(&sock, &mut gate, until), "WATCHDOG=1");

    // SAFETY: kill with the pid of our own child and a constant signal.
    let pid_t = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    assert_eq!(unsafe { libc::kill(pid_t, libc::SIGTERM) }, 0);
    loop {
        match next(&sock, &mut gate, until).as_str() {
            "WATCHDOG=1" => continue,
            "STOPPING=1" => break,
            other => panic!("unexpected notification {other:?}"),
        }
    }
    loop {
        if let Some(status) = gate.0.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the gate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(gate);
    let _ = std::fs::remove_dir_all(&dir);
}
