//! The `gate` binary speaks to systemd (a `Type=notify` unit): READY=1 once every shard
//! accepts, WATCHDOG=1 at half of WATCHDOG_USEC while every shard answers, STOPPING=1 at
//! SIGTERM, over a real datagram socket named by NOTIFY_SOCKET (`router::sdnotify::testkit`).
//! Every wait has a deadline.

#[test]
fn gate_notifies_ready_watchdog_and_stopping() {
    router::sdnotify::testkit::notify_lifecycle(
        std::path::Path::new(env!("CARGO_BIN_EXE_gate")),
        "gate",
        "[gate]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[admin]\nlisten = \"\"\n[backend]\ndata_dir = \"\"\n[log]\nlevel = \"warn\"\n",
    );
}
