//! The `gate` binary as a child process, for the tests that need a real process (SIGKILL,
//! SIGTERM, several gates with their own ports and shards).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// A `gate` process with its config directory; killed (and the directory removed) when dropped.
pub struct GateProcess {
    pub child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// A loopback address with a port nobody listens on now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

impl GateProcess {
    /// Starts the gate binary with the configuration `config` writes for a client address
    /// (`gate.listen`), and waits until it accepts. `IMGATE_TEST_LOG=info` shows its logs.
    pub fn spawn(id: &str, config: impl FnOnce(SocketAddr) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("imgate-proc-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let addr = free_addr();
        let path = dir.join("gate.toml");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config(addr).as_bytes()))
            .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_gate"))
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("IMGATE_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the gate binary");
        let gate = Self { child, addr, dir };
        let deadline = Instant::now() + WAIT * 2;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "gate {id} did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gate
    }
}

impl Drop for GateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
