//! imgate's gate: the access layer that holds client connections, speaks the client protocol of
//! `shared/PROTOCOL.md`, keeps sessions and forwards to a backend.
//!
//! Layout (see ARCHITECTURE.md): sans-IO cores (`protocol`, `session`, `delivery`, `auth`) are
//! plain state machines driven with a `now` argument; `shard` is the glommio shell around them.

pub mod protocol;
