//! The link between a gate shard and its backend: the messages generated from
//! `router/proto/link.proto`, and their framing ([`frame`]) and handshake ([`handshake`]), both
//! sans-IO. `router/LINK.md` is the document for other languages.

pub mod frame;
pub mod handshake;

pub use frame::{FrameDecoder, FrameEncoder, LinkError};
pub use handshake::{CAPABILITIES, RefuseCode, VERSION};

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/imgate.link.v1.rs"));
}

pub use generated::*;

impl LinkMsg {
    /// A message with no request id (events, downlink, handshake, heartbeats).
    pub fn event(body: link_msg::Body) -> Self {
        Self {
            request_id: 0,
            body: Some(body),
        }
    }

    /// A request or its answer.
    pub fn request(request_id: u64, body: link_msg::Body) -> Self {
        Self {
            request_id,
            body: Some(body),
        }
    }

    /// This message alone in a batch.
    pub fn into_batch(self) -> Batch {
        Batch { msgs: vec![self] }
    }
}
