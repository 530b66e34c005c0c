//! Delivery engine cores: the sans-IO state that decides *when* things happen on a shard.
//!
//! Owns no sockets and reads no clock. [`wheel`] is the shard's one timer store (login
//! deadlines, idle timeouts, ack retries, flush ticks, merge windows all live in it); the shard
//! shell drives it with `now` and re-arms its single runtime timer from `poll_timeout`.

pub mod wheel;

pub use wheel::{TimerId, TimerWheel};
