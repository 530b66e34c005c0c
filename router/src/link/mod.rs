//! The link between a gate shard and its backend: the messages generated from
//! `router/proto/link.proto`, and their framing ([`frame`]) and handshake ([`handshake`]), both
//! sans-IO. `router/LINK.md` is the document for other languages.

pub mod frame;
pub mod handshake;
pub mod io;

pub use frame::{FrameDecoder, FrameEncoder, LinkError};
pub use handshake::{CAP_BIZ_PUSH, CAPABILITIES, RefuseCode, VERSION};

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

use crate::im::{Reply, Request};
use link_msg::Body;

impl Request {
    /// The link body carrying this request.
    pub fn into_body(self) -> Body {
        match self {
            Request::Login(r) => Body::Login(r),
            Request::Send(r) => Body::Send(r),
            Request::Pull(r) => Body::Pull(r),
            Request::Read(r) => Body::Read(r),
            Request::Sync(r) => Body::Sync(r),
            Request::Biz(r) => Body::Biz(r),
        }
    }

    /// The request a link body carries; `Err` gives the body back when it is not one.
    pub fn from_body(body: Body) -> Result<Self, Body> {
        Ok(match body {
            Body::Login(r) => Request::Login(r),
            Body::Send(r) => Request::Send(r),
            Body::Pull(r) => Request::Pull(r),
            Body::Read(r) => Request::Read(r),
            Body::Sync(r) => Request::Sync(r),
            Body::Biz(r) => Request::Biz(r),
            other => return Err(other),
        })
    }

    /// The client frame's log_id this request carries.
    pub fn log_id(&self) -> u32 {
        match self {
            Request::Login(r) => r.log_id,
            Request::Send(r) => r.log_id,
            Request::Pull(r) => r.log_id,
            Request::Read(r) => r.log_id,
            Request::Sync(r) => r.log_id,
            Request::Biz(r) => r.log_id,
        }
    }
}

impl Reply {
    /// The link body carrying this answer.
    pub fn into_body(self) -> Body {
        match self {
            Reply::Login(r) => Body::LoginResult(r),
            Reply::Send(r) => Body::SendResult(r),
            Reply::Pull(r) => Body::PullResult(r),
            Reply::Read(r) => Body::ReadResult(r),
            Reply::Sync(r) => Body::SyncResult(r),
            Reply::Biz(r) => Body::BizResult(r),
        }
    }

    /// The answer a link body carries; `Err` gives the body back when it is not one.
    pub fn from_body(body: Body) -> Result<Self, Body> {
        Ok(match body {
            Body::LoginResult(r) => Reply::Login(r),
            Body::SendResult(r) => Reply::Send(r),
            Body::PullResult(r) => Reply::Pull(r),
            Body::ReadResult(r) => Reply::Read(r),
            Body::SyncResult(r) => Reply::Sync(r),
            Body::BizResult(r) => Reply::Biz(r),
            other => return Err(other),
        })
    }
}
