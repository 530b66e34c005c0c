//! LOGIN token checking (PROTOCOL.md "Tokens").
//!
//! Owns the `Authenticator` a shard asks "may `uid` log in with this token?", and the typed
//! `AuthError` that says why not. An `Authenticator` holds only immutable key material: it is
//! built once from config, cloned into each shard and never changes, so verifying needs no lock
//! and no message. Everything here is a pure function of its arguments: it never touches IO,
//! never reads the clock (the caller passes `now_unix_secs`, wall-clock seconds) and never
//! panics on any token, however hostile.
//!
//! Modes: `Dev` accepts every token (config refuses it off loopback); `Jwt` checks an HS256 JWT
//! as described in [`jwt`]. Every refusal maps to `Code::Unauthenticated` (`LoginResp.code = 2`,
//! then close); the error's `Display` is the short text put in `LoginResp.message`.

pub mod jwt;

pub use jwt::{JwtVerifier, LEEWAY_SECS, MAX_TOKEN_LEN, sign_hs256, sign_raw};

use std::fmt;

use crate::protocol::Code;

/// Checks LOGIN tokens. Cheap to clone; one per shard.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Accepts any token, including the empty one (`auth.mode = "dev"`).
    Dev,
    /// HS256 JWTs signed with the gate's secret (`auth.mode = "jwt"`).
    Jwt(JwtVerifier),
}

impl Authenticator {
    /// Accepts every token.
    pub fn dev() -> Self {
        Self::Dev
    }

    /// Checks HS256 JWTs keyed with `secret` (the UTF-8 bytes of `auth.secret`).
    pub fn jwt(secret: &[u8]) -> Self {
        Self::Jwt(JwtVerifier::new(secret))
    }

    /// `Ok` if `token` lets `uid` log in at `now_unix_secs` (wall-clock seconds since the unix
    /// epoch, passed in, never read inside).
    pub fn verify(&self, uid: u64, token: &str, now_unix_secs: u64) -> Result<(), AuthError> {
        match self {
            Self::Dev => Ok(()),
            Self::Jwt(verifier) => verifier.verify(uid, token, now_unix_secs),
        }
    }
}

/// Why a token was refused. `Display` is the short human message put in `LoginResp.message`;
/// the variant data is for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Refused before any decoding, so hostile input costs at most a length check.
    #[error("token too long ({len} bytes, max {max})")]
    TooLong { len: usize, max: usize },
    /// Not three unpadded base64url segments, or a header or claims segment that is not a JSON
    /// object.
    #[error("malformed token: {0}")]
    Malformed(#[from] Malformed),
    /// The header has no `alg`.
    #[error("token header has no alg")]
    MissingAlgorithm,
    /// `alg` is not `"HS256"` (`none`, `HS384`, `RS256`, not a string, ...). `alg` is the
    /// offending value as JSON, clipped to a few dozen bytes.
    #[error("unsupported token alg {alg}")]
    UnsupportedAlgorithm { alg: String },
    /// The header has a `crit` parameter: it names extensions this verifier does not
    /// understand, which RFC 7515 says must be refused.
    #[error("token header has crit, which is not supported")]
    CriticalHeader,
    /// The HMAC does not match (wrong secret, tampered header or claims, truncated signature).
    #[error("bad token signature")]
    BadSignature,
    /// A required claim (`sub`, `exp`) is absent.
    #[error("token has no {claim} claim")]
    MissingClaim { claim: &'static str },
    /// `sub` is present but not a JSON string (a number is refused too).
    #[error("token sub is not a string")]
    SubNotString,
    /// `sub` is a string but not the canonical decimal of a u64 (digits only, no sign, no
    /// leading zero, at most `u64::MAX`).
    #[error("token sub is not a decimal uid")]
    SubNotDecimal,
    /// `exp` or `nbf` is not a JSON integer in `0..=u64::MAX`.
    #[error("token {claim} is not a non-negative integer")]
    NotNumericDate { claim: &'static str },
    /// `now >= exp + LEEWAY_SECS`.
    #[error("token expired")]
    Expired { exp: u64, now: u64 },
    /// `now + LEEWAY_SECS < nbf`.
    #[error("token not yet valid")]
    NotYetValid { nbf: u64, now: u64 },
    /// The token is valid but for another user.
    #[error("token sub does not match uid")]
    SubjectMismatch { sub: u64, uid: u64 },
}

impl AuthError {
    /// The `LoginResp.code` for this refusal: always `UNAUTHENTICATED`.
    pub fn code(&self) -> Code {
        Code::Unauthenticated
    }
}

/// How a token failed to parse (see `AuthError::Malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A JWS compact token has exactly three `.`-separated segments.
    #[error("expected 3 dot-separated segments, found {found}")]
    SegmentCount { found: usize },
    /// Padding, a character outside the base64url alphabet, an impossible length or nonzero
    /// trailing bits (so each signature has exactly one spelling).
    #[error("{part} is not unpadded base64url")]
    Base64 { part: Part },
    /// Not UTF-8 JSON, or JSON that is not an object.
    #[error("{part} is not a JSON object")]
    Json { part: Part },
}

/// A segment of a JWS compact token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Header,
    Claims,
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header",
            Self::Claims => "claims",
            Self::Signature => "signature",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_accepts_any_token_for_any_uid() {
        let auth = Authenticator::dev();
        for token in ["", "x", "a.b.c", "\0\u{ffff}", &"z".repeat(100_000)] {
            for uid in [0, 1, 42, u64::MAX] {
                assert_eq!(auth.verify(uid, token, 0), Ok(()));
                assert_eq!(auth.verify(uid, token, u64::MAX), Ok(()));
            }
        }
    }

    #[test]
    fn jwt_mode_accepts_a_signed_token_and_refuses_dev_style_tokens() {
        let auth = Authenticator::jwt(b"s3cret");
        let token = sign_hs256(b"s3cret", 7, 1_000);
        assert_eq!(auth.verify(7, &token, 999), Ok(()));
        assert!(auth.verify(7, "", 999).is_err());
        assert!(auth.verify(7, "anything", 999).is_err());
    }

    #[test]
    fn every_refusal_is_unauthenticated_with_a_short_message() {
        let all = [
            AuthError::TooLong {
                len: 5000,
                max: MAX_TOKEN_LEN,
            },
            AuthError::Malformed(Malformed::SegmentCount { found: 1 }),
            AuthError::Malformed(Malformed::Base64 {
                part: Part::Signature,
            }),
            AuthError::Malformed(Malformed::Json { part: Part::Claims }),
            AuthError::MissingAlgorithm,
            AuthError::UnsupportedAlgorithm {
                alg: "\"none\"".into(),
            },
            AuthError::CriticalHeader,
            AuthError::BadSignature,
            AuthError::MissingClaim { claim: "exp" },
            AuthError::SubNotString,
            AuthError::SubNotDecimal,
            AuthError::NotNumericDate { claim: "exp" },
            AuthError::Expired { exp: 1, now: 2 },
            AuthError::NotYetValid { nbf: 100, now: 2 },
            AuthError::SubjectMismatch { sub: 1, uid: 2 },
        ];
        for err in all {
            assert_eq!(err.code(), Code::Unauthenticated);
            let msg = err.to_string();
            assert!(!msg.is_empty() && msg.len() <= 80, "{msg:?}");
        }
        assert_eq!(
            AuthError::Expired { exp: 1, now: 2 }.to_string(),
            "token expired"
        );
        assert_eq!(
            AuthError::from(Malformed::Base64 { part: Part::Header }).to_string(),
            "malformed token: header is not unpadded base64url"
        );
    }
}
