//! imgate's load generator and the home of the criterion suites in `bench/benches/`, one file per
//! sans-IO core.
//!
//! Sans-IO pieces:
//! - [`wire`]: the gate's frames as borrowed views, skip-parsers for the few fields the tool
//!   reads (PUSH id, sender and timestamp; SendResp code; NOTIFY; PullResp), ACK batches, the
//!   SEND template and PULL requests.
//! - [`nats`]: the part of nats-server's text protocol the tool speaks.
//! - [`latency`]: send timestamps, the open-loop schedule, the latency histogram.
//! - [`procstat`]: CPU time and RSS of this process and of the gate (`--gate-pid`) from `/proc`.
//!
//! The shell every scenario shares:
//! - [`coord`]: the run's phases driven from the calling thread, and what crosses threads.
//! - [`exec`]: one glommio executor per core and the connection shell (batched reads, ACK flush).
//! - [`drive`]: the send and receive loops, and the pacers (open loop, closed-loop windows).
//! - [`pace`]: one pacing service per executor that wakes senders at their due times (its queue
//!   is sans-IO).
//! - [`gate_conn`], [`nats_conn`]: the per-connection protocol handlers of the two targets;
//!   [`ws`]: the gate's handler over WebSocket (`--target gate-ws`).
//! - [`report`]: what every summary shares.
//!
//! The login scenarios' shell (connections that log in and do little else):
//! - [`harness`]: executors, the error log and the phase cell for `connect` and `idle`.
//! - [`link`]: sockets from a chosen source address and their read path.
//! - [`sources`]: `--sources`, the loopback source addresses connections rotate over.
//! - [`login`]: tokens, pre-encoded LOGIN frames, a login connection's view of gate frames, and
//!   failure kinds (sans-IO).
//!
//! Scenarios: [`fanout`] (one group or subject, many receivers), [`chat`] (one-to-one pairs),
//! [`uplink`] (SEND → SendResp), [`connect`] (logins/s over rolling bursts), [`idle`] (logged-in
//! connections at rest; the gate's memory per connection).

pub mod chat;
pub mod connect;
pub mod coord;
pub mod drive;
pub mod exec;
pub mod fanout;
pub mod gate_conn;
pub mod harness;
pub mod idle;
pub mod latency;
pub mod link;
pub mod login;
pub mod nats;
pub mod nats_conn;
pub mod pace;
pub mod procstat;
pub mod report;
pub mod sources;
pub mod uplink;
pub mod wire;
pub mod ws;
