//! The backend side of imgate: the link protocol (`link`), the `Backend` trait and its embedded
//! and remote plug-ins (`backend`), the reference IM logic (`im`), and the link server
//! (`server`) the `router` binary runs for many gates.

pub mod backend;
pub mod config;
pub mod idmap;
pub mod im;
pub mod jwt;
pub mod log;
pub mod logging;
pub mod sdnotify;

pub mod link;
pub mod server;
#[cfg(test)]
mod testutil;

/// Result codes shared with the client protocol (PROTOCOL.md "Codes").
pub mod code {
    pub const OK: u32 = 0;
    pub const BAD_REQUEST: u32 = 1;
    pub const UNAUTHENTICATED: u32 = 2;
    pub const FORBIDDEN: u32 = 3;
    pub const RATE_LIMITED: u32 = 4;
    pub const BACKEND_UNAVAILABLE: u32 = 5;
    pub const TOO_LARGE: u32 = 6;
    pub const INTERNAL: u32 = 9;
    pub const CONTENT_REJECTED: u32 = 10;
    pub const NOT_FOUND: u32 = 11;
}

/// `conv_type` values.
pub mod conv {
    pub const SINGLE: u32 = 1;
    pub const GROUP: u32 = 2;
}
