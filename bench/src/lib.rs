//! imgate's load generator and the home of the criterion suites in `bench/benches/`, one file per
//! sans-IO core.
//!
//! - [`wire`]: the gate's frames as borrowed views, the PUSH `msg_id` skip-parser, ACK batches and
//!   the SEND template (sans-IO).
//! - [`nats`]: the part of nats-server's text protocol the tool speaks (sans-IO).
//! - [`procstat`]: CPU time and RSS of this process and of the gate (`--gate-pid`) from `/proc`.
//! - [`harness`]: what every scenario's coordinator shares (phases, `--cpus`, loopback rule,
//!   error log, executors).
//! - [`link`]: sockets from a chosen source address and the shared read path.
//! - [`sources`]: `--sources`, the loopback source addresses connections rotate over.
//! - [`login`]: tokens, pre-encoded LOGIN frames, a login connection's view of gate frames, and
//!   failure kinds (sans-IO).
//! - [`connect`]: the login-rate scenario (`imgate-bench connect`): rolling bursts of connect,
//!   LOGIN, close over many source addresses.
//! - [`idle`]: the idle-connections scenario (`imgate-bench idle`): N logged-in connections
//!   kept alive by heartbeats; the gate's marginal memory per connection.
//! - [`fanout`]: the fan-out scenario (`imgate-bench fanout`): glommio executors driving many
//!   connections each, against the gate or nats-server.

pub mod connect;
pub mod fanout;
pub mod harness;
pub mod idle;
pub mod link;
pub mod login;
pub mod nats;
pub mod procstat;
pub mod sources;
pub mod wire;
