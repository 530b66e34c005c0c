//! systemd notifications for the gate (`READY=1`, `STOPPING=1`, `WATCHDOG=1`): the router
//! crate's `sd_notify(3)` (pure std, no-ops without `NOTIFY_SOCKET`), shared so both binaries
//! speak it the same way. [`crate::run`] sends `READY=1` once every shard is accepting.

pub use router::sdnotify::*;
