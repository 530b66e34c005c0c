//! imgate's gate: the access layer that holds client connections, speaks the client protocol of
//! `shared/PROTOCOL.md`, keeps sessions and forwards to a backend.
//!
//! Layout (see ARCHITECTURE.md): sans-IO cores (`protocol`, `session`, `delivery`, `auth`) are
//! plain state machines driven with a `now` argument; `shard` is the glommio shell around them;
//! `client` is a small blocking client library for tests and tools; `doctor` checks a host
//! against the configuration (`gate doctor`); `sdnotify` speaks to systemd.

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod delivery;
pub mod doctor;
pub mod protocol;
pub mod sdnotify;
pub mod session;
pub mod shard;
pub mod tls;
pub mod web;

pub use shard::{GateHandle, StartError, run, start};
