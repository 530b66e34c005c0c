//! imgate's load generator and the home of the criterion suites in `bench/benches/`, one file per
//! sans-IO core.
//!
//! - [`wire`]: the gate's frames as borrowed views, the PUSH `msg_id` skip-parser, ACK batches and
//!   the SEND template (sans-IO).
//! - [`nats`]: the part of nats-server's text protocol the tool speaks (sans-IO).
//! - [`procstat`]: CPU time and RSS of this process and of the gate (`--gate-pid`) from `/proc`.
//! - [`fanout`]: the fan-out scenario (`imgate-bench fanout`): glommio executors driving many
//!   connections each, against the gate or nats-server.

pub mod fanout;
pub mod nats;
pub mod procstat;
pub mod wire;
