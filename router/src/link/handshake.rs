//! The link handshake, sans-IO: the gate's first frame holds a [`Hello`]; the backend answers
//! with a [`Welcome`] or a [`Refused`] (and closes). Version 1 accepts only version 1; the
//! capability bits both sides share are the ones in force ([`CAP_BIZ_PUSH`]).

use super::link_msg::Body;
use super::{Batch, Hello, LinkError, LinkMsg, Refused, Welcome};

/// The link protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Capability bit: the gate handles `BizPushUsers` downlink (BIZ_PUSH frames to its clients).
/// A backend sends it only on links whose Welcome granted the bit: an older gate would close
/// the link on a message it cannot decode.
pub const CAP_BIZ_PUSH: u64 = 1;
/// The optional features this build supports.
pub const CAPABILITIES: u64 = CAP_BIZ_PUSH;
/// Bounds on the heartbeat interval a side may announce, ms.
pub const MIN_HEARTBEAT_MS: u32 = 100;
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// `Refused.code` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RefuseCode {
    /// Another protocol version.
    Version = 1,
    /// A Hello with impossible values (empty gate_id, shard >= shards, ...).
    BadHello = 2,
    /// The first message of the link was not a Hello.
    NotHello = 3,
}

/// A refusal to send back before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefuseCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: RefuseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    pub fn to_msg(&self) -> LinkMsg {
        LinkMsg::event(Body::Refused(Refused {
            code: self.code as u32,
            reason: self.reason.clone(),
            version: VERSION,
        }))
    }
}

/// The backend's side: the Hello opening `first` (the link's first frame), checked, and the rest
/// of that frame's messages (processed after the Welcome).
pub fn accept_hello(first: Batch) -> Result<(Hello, Vec<LinkMsg>), Refusal> {
    let mut msgs = first.msgs.into_iter();
    let Some(LinkMsg {
        body: Some(Body::Hello(hello)),
        ..
    }) = msgs.next()
    else {
        return Err(Refusal::new(
            RefuseCode::NotHello,
            "the first message must be a Hello",
        ));
    };
    if hello.version != VERSION {
        return Err(Refusal::new(
            RefuseCode::Version,
            format!(
                "link version {} is not supported; this backend speaks {VERSION}",
                hello.version
            ),
        ));
    }
    if hello.gate_id.is_empty() || hello.gate_id.len() > 256 {
        return Err(Refusal::new(
            RefuseCode::BadHello,
            "gate_id must be 1 to 256 bytes",
        ));
    }
    if hello.shards == 0 || hello.shards > 1024 || hello.shard >= hello.shards {
        return Err(Refusal::new(
            RefuseCode::BadHello,
            format!(
                "shard {} of {} is not a valid shard (shards: 1 to 1024)",
                hello.shard, hello.shards
            ),
        ));
    }
    if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&hello.heartbeat_ms) {
        return Err(Refusal::new(
            RefuseCode::BadHello,
            format!("heartbeat_ms must be between {MIN_HEARTBEAT_MS} and {MAX_HEARTBEAT_MS}"),
        ));
    }
    if (hello.max_frame as usize) < super::frame::MIN_MAX_FRAME {
        return Err(Refusal::new(
            RefuseCode::BadHello,
            format!("max_frame must be at least {}", super::frame::MIN_MAX_FRAME),
        ));
    }
    Ok((hello, msgs.collect()))
}

/// The gate's side: the backend's first frame, which must open with a Welcome of our version.
pub fn expect_welcome(first: Batch) -> Result<(Welcome, Vec<LinkMsg>), LinkError> {
    let mut msgs = first.msgs.into_iter();
    match msgs.next() {
        Some(LinkMsg {
            body: Some(Body::Welcome(welcome)),
            ..
        }) => {
            if welcome.version != VERSION {
                return Err(LinkError::Version {
                    ours: VERSION,
                    theirs: welcome.version,
                });
            }
            if (welcome.max_frame as usize) < super::frame::MIN_MAX_FRAME
                || !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&welcome.heartbeat_ms)
            {
                return Err(LinkError::Handshake(
                    "the Welcome's max_frame or heartbeat_ms is out of range",
                ));
            }
            Ok((welcome, msgs.collect()))
        }
        Some(LinkMsg {
            body: Some(Body::Refused(r)),
            ..
        }) => Err(LinkError::Refused {
            code: r.code,
            reason: r.reason,
        }),
        _ => Err(LinkError::Handshake(
            "the backend's first message was not a Welcome",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            gate_id: "gate-1".into(),
            shard: 1,
            shards: 2,
            capabilities: 0,
            heartbeat_ms: 1000,
            max_frame: 4 << 20,
        }
    }

    fn batch(body: Body) -> Batch {
        Batch {
            msgs: vec![LinkMsg::event(body)],
        }
    }

    #[test]
    fn a_good_hello_is_accepted_with_what_followed_it() {
        let mut first = batch(Body::Hello(hello()));
        first
            .msgs
            .push(LinkMsg::event(Body::Heartbeat(Default::default())));
        let (h, rest) = accept_hello(first).expect("accepted");
        assert_eq!(h, hello());
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn another_version_is_refused_with_code_1() {
        let err = accept_hello(batch(Body::Hello(Hello {
            version: 2,
            ..hello()
        })))
        .expect_err("refused");
        assert_eq!(err.code, RefuseCode::Version);
        assert!(err.reason.contains("version 2"), "{}", err.reason);
        let Some(Body::Refused(r)) = err.to_msg().body else {
            panic!("not a Refused")
        };
        assert_eq!((r.code, r.version), (1, VERSION));
    }

    #[test]
    fn impossible_hellos_are_refused_with_code_2() {
        for bad in [
            Hello {
                shard: 2,
                ..hello()
            },
            Hello {
                shards: 0,
                shard: 0,
                ..hello()
            },
            Hello {
                gate_id: String::new(),
                ..hello()
            },
            Hello {
                heartbeat_ms: 0,
                ..hello()
            },
            Hello {
                max_frame: 10,
                ..hello()
            },
        ] {
            let err = accept_hello(batch(Body::Hello(bad.clone()))).expect_err("refused");
            assert_eq!(err.code, RefuseCode::BadHello, "{bad:?}");
        }
    }

    #[test]
    fn anything_but_a_hello_first_is_refused_with_code_3() {
        let err = accept_hello(batch(Body::Heartbeat(Default::default()))).expect_err("refused");
        assert_eq!(err.code, RefuseCode::NotHello);
        let err = accept_hello(Batch::default()).expect_err("refused");
        assert_eq!(err.code, RefuseCode::NotHello);
    }

    #[test]
    fn the_gate_checks_the_welcome_version_and_reads_a_refusal() {
        let welcome = Welcome {
            version: VERSION,
            backend_id: "r".into(),
            capabilities: 0,
            heartbeat_ms: 1000,
            max_frame: 4 << 20,
        };
        expect_welcome(batch(Body::Welcome(welcome.clone()))).expect("ok");
        let err = expect_welcome(batch(Body::Welcome(Welcome {
            version: 9,
            ..welcome
        })))
        .expect_err("version");
        assert!(matches!(err, LinkError::Version { theirs: 9, .. }));
        let err = expect_welcome(
            Refusal::new(RefuseCode::Version, "no")
                .to_msg()
                .into_batch(),
        )
        .expect_err("refused");
        assert!(matches!(err, LinkError::Refused { code: 1, .. }));
    }
}
