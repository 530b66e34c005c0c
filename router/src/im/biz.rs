//! The reference backend's BIZ services (PROTOCOL.md "Reference backend services"): decoding a
//! `link::Biz` into a typed [`GroupCall`] and encoding the JSON answers. Pure functions of their
//! arguments: no state, never touches IO or the clock.

use serde::{Deserialize, Serialize};

use crate::code;
use crate::link;

/// A decoded BIZ request (the `group` service is the only one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCall {
    /// `group.create {"name", "members"}`: `members` as given (the caller is not yet added).
    Create { name: String, members: Vec<u64> },
    /// `group.join {"group_id"}`.
    Join(u64),
    /// `group.leave {"group_id"}`.
    Leave(u64),
    /// `group.members {"group_id"}`.
    Members(u64),
}

/// Why a BIZ request was refused before it reached any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BizError {
    /// No such service or method (NOT_FOUND).
    #[error("unknown BIZ service or method")]
    Unknown,
    /// The payload is not the JSON the method expects (BAD_REQUEST).
    #[error("payload is not the expected JSON: {expected}")]
    BadPayload { expected: &'static str },
    /// A uid 0 in `members` (BAD_REQUEST).
    #[error("uid 0 is not a valid member")]
    ZeroMember,
}

impl BizError {
    /// The `BizResult.code` for this refusal.
    pub fn code(&self) -> u32 {
        match self {
            Self::Unknown => code::NOT_FOUND,
            Self::BadPayload { .. } | Self::ZeroMember => code::BAD_REQUEST,
        }
    }
}

#[derive(Deserialize)]
struct CreateReq {
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<u64>,
}

const GROUP_REF: &str = r#"{"group_id": N}"#;

/// Decodes `biz` (service and method first, so an unknown method is NOT_FOUND whatever its
/// payload).
pub fn parse(biz: &link::Biz) -> Result<GroupCall, BizError> {
    if biz.service != "group" {
        return Err(BizError::Unknown);
    }
    let group_id = || {
        super::group_id_of(&biz.payload).ok_or(BizError::BadPayload {
            expected: GROUP_REF,
        })
    };
    match biz.method.as_str() {
        "create" => {
            let req: CreateReq =
                serde_json::from_slice(&biz.payload).map_err(|_| BizError::BadPayload {
                    expected: r#"{"name": "...", "members": [uid, ...]}"#,
                })?;
            if req.members.contains(&0) {
                return Err(BizError::ZeroMember);
            }
            Ok(GroupCall::Create {
                name: req.name,
                members: req.members,
            })
        }
        "join" => Ok(GroupCall::Join(group_id()?)),
        "leave" => Ok(GroupCall::Leave(group_id()?)),
        "members" => Ok(GroupCall::Members(group_id()?)),
        _ => Err(BizError::Unknown),
    }
}

/// An OK answer carrying `payload` as JSON.
pub fn ok(payload: &impl Serialize) -> link::BizResult {
    match serde_json::to_vec(payload) {
        Ok(json) => link::BizResult {
            code: code::OK,
            payload: json.into(),
            message: String::new(),
        },
        // Maps with non-string keys are the only failure; the answers here have none.
        Err(_) => refuse(code::INTERNAL, "answer did not encode"),
    }
}

/// A refusal with `code` and `message` and no payload.
pub fn refuse(code: u32, message: impl Into<String>) -> link::BizResult {
    link::BizResult {
        code,
        payload: Default::default(),
        message: message.into(),
    }
}

/// `{"group_id": N}`.
#[derive(Serialize)]
pub struct Created {
    pub group_id: u64,
}

/// `{}`.
#[derive(Serialize)]
pub struct Empty {}

/// `{"members": [uid, ...]}`.
#[derive(Serialize)]
pub struct Members {
    pub members: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn biz(service: &str, method: &str, payload: &str) -> link::Biz {
        link::Biz {
            uid: 1,
            service: service.into(),
            method: method.into(),
            payload: payload.as_bytes().to_vec().into(),
            log_id: 0,
        }
    }

    #[test]
    fn group_calls_decode() {
        assert_eq!(
            parse(&biz("group", "create", r#"{"name":"x","members":[3,2]}"#)),
            Ok(GroupCall::Create {
                name: "x".into(),
                members: vec![3, 2]
            })
        );
        assert_eq!(
            parse(&biz("group", "leave", r#"{"group_id":9}"#)),
            Ok(GroupCall::Leave(9))
        );
    }

    #[test]
    fn unknown_method_wins_over_bad_payload() {
        assert_eq!(
            parse(&biz("group", "explode", "not json")),
            Err(BizError::Unknown)
        );
        assert_eq!(parse(&biz("chat", "create", "{}")), Err(BizError::Unknown));
        assert_eq!(
            parse(&biz("group", "create", r#"{"members":[-1]}"#))
                .unwrap_err()
                .code(),
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(&biz("group", "join", r#"{"group_id":"9"}"#))
                .unwrap_err()
                .code(),
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(&biz("group", "create", r#"{"members":[0]}"#)),
            Err(BizError::ZeroMember)
        );
    }
}
