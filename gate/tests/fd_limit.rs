//! At the open-file limit the gate's accept backs off instead of spinning, and serves again as
//! soon as descriptors free up. Its own test binary: it lowers this process's RLIMIT_NOFILE.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{TestGate, WAIT, assert_alive};

/// The `stat` file of this process's first thread whose name starts with `name`, kept open so
/// it can be read while no descriptor is left. (glommio appends `-<id>` to executor names; the
/// kernel keeps 15 bytes.)
fn thread_stat(name: &str) -> Option<std::fs::File> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim().starts_with(name) {
            return std::fs::File::open(dir.join("stat")).ok();
        }
    }
    None
}

/// CPU time (user + system) from a thread's `stat`, in clock ticks.
fn cpu_ticks(stat: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).expect("read stat");
    let text = std::str::from_utf8(&buf[..n]).expect("stat is text");
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = &text[text.rfind(')').expect("stat has a command") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |i: usize| fields[i].parse::<u64>().expect("numeric stat field");
    field(11) + field(12)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[test]
fn accept_backs_off_at_the_open_file_limit_and_recovers() {
    let gate = TestGate::start_with(|c| c.gate.shards = 1);
    // A logged-in user, to check the gate keeps serving while it cannot accept.
    let (mut bystander, _) = gate.login(1, "d");
    let shard_stat = thread_stat("imgate-shard-0-").expect("the shard thread is named");

    // Leave room for a few dozen descriptors, then use them all up with connections: each takes
    // one here and one in the gate, until the gate's accept gets EMFILE.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let low = libc::rlimit {
        rlim_cur: open_fds() + 40,
        rlim_max: limit.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let mut clients = Vec::new();
    while let Ok(stream) = TcpStream::connect(gate.addr()) {
        clients.push(stream);
        assert!(clients.len() < 200, "the lowered limit was never reached");
    }
    assert!(!clients.is_empty());

    // Starved: connections wait in the backlog. The shard must not spin on EMFILE.
    let ticks_before = cpu_ticks(&shard_stat);
    let measured_from = Instant::now();
    while measured_from.elapsed() < Duration::from_millis(600) {
        assert_alive(&mut bystander);
        std::thread::sleep(Duration::from_millis(100));
    }
    let ticks = cpu_ticks(&shard_stat) - ticks_before;
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let elapsed_ticks = measured_from.elapsed().as_secs_f64() * ticks_per_sec as f64;
    assert!(
        (ticks as f64) < elapsed_ticks * 0.5,
        "shard used {ticks} ticks of CPU in {elapsed_ticks:.0}: accept is spinning"
    );

    // Descriptors come back: the gate accepts again and a new client logs in.
    drop(clients);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let deadline = Instant::now() + WAIT;
    let (mut fresh, resp) = loop {
        let mut client = gate.connect();
        match client.login(2, "dev", "d") {
            Ok(resp) => break (client, resp),
            Err(err) if Instant::now() < deadline => {
                eprintln!("retrying after {err}");
            }
            Err(err) => panic!("the gate did not recover: {err}"),
        }
    };
    assert_eq!(resp.code, 0);
    assert_alive(&mut fresh);
    gate.stop();
}
