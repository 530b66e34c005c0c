//! Result codes and KICK reasons as numbered on the wire (PROTOCOL.md "Codes").

/// A result code carried in `code` fields and in `Error` bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    Ok = 0,
    BadRequest = 1,
    Unauthenticated = 2,
    Forbidden = 3,
    RateLimited = 4,
    BackendUnavailable = 5,
    TooLarge = 6,
    UnsupportedVersion = 7,
    NotLoggedIn = 8,
    Internal = 9,
    ContentRejected = 10,
    NotFound = 11,
}

impl Code {
    /// The number sent on the wire.
    pub const fn wire(self) -> u32 {
        self as u32
    }
}

/// `Kick.reason`: why the gate is closing a logged-in session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum KickReason {
    DuplicateLogin = 1,
    Draining = 2,
    AuthExpired = 3,
    SlowConsumer = 4,
    ProtocolError = 5,
    IdleTimeout = 6,
    Admin = 7,
}

impl KickReason {
    /// The number sent on the wire.
    pub const fn wire(self) -> u32 {
        self as u32
    }
}
