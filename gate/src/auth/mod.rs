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

/// HS256 JWT verification and signing, shared with the reference backend.
pub use router::jwt;
pub use router::jwt::{
    AuthError, JwtVerifier, LEEWAY_SECS, MAX_TOKEN_LEN, Malformed, Part, sign_hs256, sign_raw,
};

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
            assert_eq!(err.code(), crate::protocol::Code::Unauthenticated.wire());
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
