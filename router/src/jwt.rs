//! HS256 JWT verification and signing (PROTOCOL.md "Tokens", RFC 7519 / RFC 7515 compact form).
//!
//! Owns one precomputed HMAC-SHA256 key state (`JwtVerifier`), cloned per verification; nothing
//! else is kept between calls. Pure functions of their arguments: this module never touches IO
//! and never reads the clock (`now` is wall-clock unix seconds passed in by the caller).
//!
//! A token is accepted for `uid` at `now` iff, checked in this order:
//!
//! 1. it is at most `MAX_TOKEN_LEN` bytes (checked before any decoding, so hostile input costs at
//!    most a length check, a few base64/JSON passes over 4 KiB and one HMAC);
//! 2. it is exactly three `.`-separated segments of base64url *without* padding (RFC 7515): `=`,
//!    `+`, `/`, whitespace and nonzero trailing bits are refused, so each token has one spelling;
//! 3. the header is a JSON object whose `alg` is the string `"HS256"` (anything else, including
//!    `none`, `HS384`, `HS512` or no `alg`, is refused) and that has no `crit` parameter; `typ`,
//!    `kid` and other parameters are ignored;
//! 4. the signature is the HMAC-SHA256, keyed with the secret's bytes, of the ASCII text
//!    `header.claims`, compared in constant time (`Mac::verify_slice`);
//! 5. the claims are a JSON object with `sub`, a JSON *string* that is the canonical decimal
//!    form of a u64 (digits only, no sign, no leading zero; a JSON number is refused), and `exp`,
//!    a JSON integer in `0..=u64::MAX` (fractions, exponents, negatives and strings are refused);
//!    an optional `nbf` follows the same integer rule; other claims are ignored;
//! 6. `now < exp + LEEWAY_SECS` (so a token with `exp = E` is accepted through `E + 29` and
//!    refused from `E + 30`), and, if `nbf` is present, `nbf <= now + LEEWAY_SECS`; sums
//!    saturate at `u64::MAX`;
//! 7. `sub == uid`.
//!
//! The claims are parsed only after the signature verifies. Nothing here panics on any input.
//!
//! Shared by the gate (`auth.mode = "jwt"`) and the reference backend (`auth.mode = "backend"`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;
type Object = Map<String, Value>;

/// Clock leeway, in seconds, applied to `exp` and `nbf` (PROTOCOL.md: "at most 30 s").
pub const LEEWAY_SECS: u64 = 30;
/// Longest token looked at; longer ones are refused before decoding.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The only accepted `alg`.
const ALG: &str = "HS256";
/// Longest `alg` echoed back in `AuthError::UnsupportedAlgorithm`.
const MAX_ECHOED_ALG: usize = 32;

/// Verifies HS256 tokens for one secret. Cheap to clone (a few hundred bytes of HMAC state, no
/// heap); `Debug` does not print the key.
#[derive(Clone)]
pub struct JwtVerifier {
    /// HMAC state with the key already absorbed; cloned for each token.
    mac: HmacSha256,
}

impl JwtVerifier {
    /// A verifier keyed with `secret` (PROTOCOL.md: the UTF-8 bytes of the gate's secret).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: new_mac(secret),
        }
    }

    /// `Ok` if `token` lets `uid` log in at `now` (unix seconds); see the module doc for the
    /// exact rules and the order they are checked in.
    pub fn verify(&self, uid: u64, token: &str, now: u64) -> Result<(), AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let segment_count = || Malformed::SegmentCount {
            found: token.split('.').count(),
        };
        let (signing_input, signature_b64) = token.rsplit_once('.').ok_or_else(segment_count)?;
        let (header_b64, claims_b64) = signing_input.split_once('.').ok_or_else(segment_count)?;
        if claims_b64.contains('.') {
            return Err(segment_count().into());
        }

        let header = decode_object(header_b64, Part::Header)?;
        check_header(&header)?;

        let signature = decode(signature_b64, Part::Signature)?;
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims = decode_object(claims_b64, Part::Claims)?;
        let sub = match claims.get("sub") {
            None => return Err(AuthError::MissingClaim { claim: "sub" }),
            Some(Value::String(sub)) => parse_uid(sub).ok_or(AuthError::SubNotDecimal)?,
            Some(_) => return Err(AuthError::SubNotString),
        };
        let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::MissingClaim { claim: "exp" })?;
        let nbf = numeric_date(&claims, "nbf")?;

        if now >= exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired { exp, now });
        }
        if let Some(nbf) = nbf
            && now.saturating_add(LEEWAY_SECS) < nbf
        {
            return Err(AuthError::NotYetValid { nbf, now });
        }
        if sub != uid {
            return Err(AuthError::SubjectMismatch { sub, uid });
        }
        Ok(())
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier").finish_non_exhaustive()
    }
}

/// Makes an HS256 token `{"alg":"HS256","typ":"JWT"}` . `{"sub":"<uid>","exp":exp}`, for tests,
/// the load generator and the chat client.
pub fn sign_hs256(secret: &[u8], uid: u64, exp_unix_secs: u64) -> String {
    let claims = format!(r#"{{"sub":"{uid}","exp":{exp_unix_secs}}}"#);
    sign_raw(secret, r#"{"alg":"HS256","typ":"JWT"}"#, &claims)
}

/// Signs arbitrary header and claims text with HMAC-SHA256, whatever they say (tests use it to
/// forge bad tokens: `alg` none, `sub` as a number, no `exp`, ...).
pub fn sign_raw(secret: &[u8], header_json: &str, claims_json: &str) -> String {
    let mut token = String::with_capacity((header_json.len() + claims_json.len()) * 4 / 3 + 48);
    URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
    let mut mac = new_mac(secret);
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

fn new_mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

fn decode(segment: &str, part: Part) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Malformed::Base64 { part }.into())
}

fn decode_object(segment: &str, part: Part) -> Result<Object, AuthError> {
    let bytes = decode(segment, part)?;
    serde_json::from_slice(&bytes).map_err(|_| Malformed::Json { part }.into())
}

fn check_header(header: &Object) -> Result<(), AuthError> {
    match header.get("alg") {
        None => return Err(AuthError::MissingAlgorithm),
        Some(Value::String(alg)) if alg == ALG => {}
        Some(other) => return Err(AuthError::UnsupportedAlgorithm { alg: clip(other) }),
    }
    if header.contains_key("crit") {
        return Err(AuthError::CriticalHeader);
    }
    Ok(())
}

/// `value` as JSON text, cut to `MAX_ECHOED_ALG` bytes on a char boundary.
fn clip(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > MAX_ECHOED_ALG {
        let mut end = MAX_ECHOED_ALG;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The canonical decimal form of a u64: `0`, or `[1-9][0-9]*` that fits.
fn parse_uid(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let canonical = match bytes {
        [] => false,
        [b'0'] => true,
        [first, ..] => *first != b'0' && bytes.iter().all(u8::is_ascii_digit),
    };
    if canonical { text.parse().ok() } else { None }
}

/// `Ok(None)` if `claim` is absent; a u64 if it is a non-negative JSON integer.
fn numeric_date(claims: &Object, claim: &'static str) -> Result<Option<u64>, AuthError> {
    claims
        .get(claim)
        .map(|value| value.as_u64().ok_or(AuthError::NotNumericDate { claim }))
        .transpose()
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
    pub fn code(&self) -> u32 {
        crate::code::UNAUTHENTICATED
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

    const SECRET: &[u8] = b"s3cret";
    const UID: u64 = 42;
    const EXP: u64 = 2_000_000_000;
    /// `shared/protocol-vectors.json` "jwt".
    const VECTOR: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MjAwMDAwMDAwMH0.LeH_swQZfTl-Fc9QYQScEsNpjwHNdnEie0t58Ed38uo";
    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    const NOW: u64 = EXP - 1_000;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(SECRET)
    }

    fn verify_claims(claims: &str) -> Result<(), AuthError> {
        verifier().verify(UID, &sign_raw(SECRET, HS256, claims), NOW)
    }

    fn verify_header(header: &str) -> Result<(), AuthError> {
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP}}}"#);
        verifier().verify(UID, &sign_raw(SECRET, header, &claims), NOW)
    }

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn malformed(m: Malformed) -> Result<(), AuthError> {
        Err(AuthError::Malformed(m))
    }

    #[test]
    fn protocol_vector_token_verifies_for_uid_42_before_exp() {
        assert_eq!(verifier().verify(UID, VECTOR, NOW), Ok(()));
        assert_eq!(verifier().verify(UID, VECTOR, 0), Ok(()));
        assert_eq!(verifier().verify(UID, VECTOR, EXP - 1), Ok(()));
    }

    #[test]
    fn sign_hs256_reproduces_the_protocol_vector_byte_for_byte() {
        assert_eq!(sign_hs256(SECRET, UID, EXP), VECTOR);
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = sign_hs256(b"s3cret!", UID, EXP);
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            JwtVerifier::new(b"").verify(UID, VECTOR, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn token_expired_beyond_leeway_is_refused() {
        let now = EXP + LEEWAY_SECS;
        assert_eq!(
            verifier().verify(UID, VECTOR, now),
            Err(AuthError::Expired { exp: EXP, now })
        );
        let now = u64::MAX;
        assert_eq!(
            verifier().verify(UID, VECTOR, now),
            Err(AuthError::Expired { exp: EXP, now })
        );
        let token = sign_hs256(SECRET, UID, 0);
        assert_eq!(
            verifier().verify(UID, &token, 30),
            Err(AuthError::Expired { exp: 0, now: 30 })
        );
    }

    #[test]
    fn token_within_leeway_is_accepted() {
        assert_eq!(verifier().verify(UID, VECTOR, EXP), Ok(()));
        assert_eq!(
            verifier().verify(UID, VECTOR, EXP + LEEWAY_SECS - 1),
            Ok(())
        );
    }

    #[test]
    fn exp_near_u64_max_does_not_overflow() {
        let token = sign_hs256(SECRET, UID, u64::MAX);
        assert_eq!(verifier().verify(UID, &token, u64::MAX - 1), Ok(()));
        assert_eq!(
            verifier().verify(UID, &token, u64::MAX),
            Err(AuthError::Expired {
                exp: u64::MAX,
                now: u64::MAX
            })
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused_beyond_leeway() {
        let claims = format!(
            r#"{{"sub":"{UID}","exp":{EXP},"nbf":{}}}"#,
            NOW + LEEWAY_SECS
        );
        assert_eq!(verify_claims(&claims), Ok(()));
        let nbf = NOW + LEEWAY_SECS + 1;
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP},"nbf":{nbf}}}"#);
        assert_eq!(
            verify_claims(&claims),
            Err(AuthError::NotYetValid { nbf, now: NOW })
        );
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP},"nbf":"0"}}"#);
        assert_eq!(
            verify_claims(&claims),
            Err(AuthError::NotNumericDate { claim: "nbf" })
        );
    }

    #[test]
    fn token_for_another_uid_is_subject_mismatch() {
        assert_eq!(
            verifier().verify(43, VECTOR, NOW),
            Err(AuthError::SubjectMismatch { sub: 42, uid: 43 })
        );
        assert_eq!(
            verifier().verify(0, VECTOR, NOW),
            Err(AuthError::SubjectMismatch { sub: 42, uid: 0 })
        );
        let token = sign_hs256(SECRET, u64::MAX, EXP);
        assert_eq!(verifier().verify(u64::MAX, &token, NOW), Ok(()));
    }

    #[test]
    fn sub_as_number_is_refused() {
        let claims = format!(r#"{{"sub":{UID},"exp":{EXP}}}"#);
        assert_eq!(verify_claims(&claims), Err(AuthError::SubNotString));
        for sub in ["null", "true", "[\"42\"]", "{}", "42.0"] {
            let claims = format!(r#"{{"sub":{sub},"exp":{EXP}}}"#);
            assert_eq!(
                verify_claims(&claims),
                Err(AuthError::SubNotString),
                "{sub}"
            );
        }
    }

    #[test]
    fn sub_that_is_not_a_canonical_decimal_is_refused() {
        for sub in [
            "",
            "042",
            "00",
            "+42",
            "-42",
            " 42",
            "42 ",
            "4_2",
            "0x2a",
            "42a",
            "٤٢",
            "18446744073709551616",
        ] {
            let claims = format!(r#"{{"sub":"{sub}","exp":{EXP}}}"#);
            assert_eq!(
                verify_claims(&claims),
                Err(AuthError::SubNotDecimal),
                "{sub:?}"
            );
        }
        let claims = format!(r#"{{"sub":"0","exp":{EXP}}}"#);
        assert_eq!(
            verify_claims(&claims),
            Err(AuthError::SubjectMismatch { sub: 0, uid: UID })
        );
    }

    #[test]
    fn missing_exp_is_refused() {
        let claims = format!(r#"{{"sub":"{UID}"}}"#);
        assert_eq!(
            verify_claims(&claims),
            Err(AuthError::MissingClaim { claim: "exp" })
        );
    }

    #[test]
    fn missing_sub_is_refused() {
        let claims = format!(r#"{{"exp":{EXP}}}"#);
        assert_eq!(
            verify_claims(&claims),
            Err(AuthError::MissingClaim { claim: "sub" })
        );
        assert_eq!(
            verify_claims("{}"),
            Err(AuthError::MissingClaim { claim: "sub" })
        );
    }

    #[test]
    fn exp_that_is_not_a_non_negative_integer_is_refused() {
        for exp in [
            "\"2000000000\"",
            "2000000000.0",
            "2e9",
            "-1",
            "null",
            "true",
            "18446744073709551616",
        ] {
            let claims = format!(r#"{{"sub":"{UID}","exp":{exp}}}"#);
            assert_eq!(
                verify_claims(&claims),
                Err(AuthError::NotNumericDate { claim: "exp" }),
                "{exp}"
            );
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let none = AuthError::UnsupportedAlgorithm {
            alg: "\"none\"".into(),
        };
        assert_eq!(
            verify_header(r#"{"alg":"none","typ":"JWT"}"#),
            Err(none.clone())
        );
        // The classic forgery: no signature at all.
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP}}}"#);
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims));
        assert_eq!(verifier().verify(UID, &token, NOW), Err(none));
        let upper = AuthError::UnsupportedAlgorithm {
            alg: "\"None\"".into(),
        };
        assert_eq!(verify_header(r#"{"alg":"None"}"#), Err(upper));
    }

    #[test]
    fn alg_hs512_and_hs384_are_refused() {
        for alg in ["HS512", "HS384", "RS256", "hs256", "HS256 ", ""] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let err = AuthError::UnsupportedAlgorithm {
                alg: format!("\"{alg}\""),
            };
            assert_eq!(verify_header(&header), Err(err), "{alg:?}");
        }
        let err = AuthError::UnsupportedAlgorithm { alg: "256".into() };
        assert_eq!(verify_header(r#"{"alg":256}"#), Err(err));
    }

    #[test]
    fn long_unsupported_alg_is_clipped_in_the_error() {
        let header = format!(r#"{{"alg":"{}"}}"#, "é".repeat(100));
        let Err(AuthError::UnsupportedAlgorithm { alg }) = verify_header(&header) else {
            panic!("expected UnsupportedAlgorithm");
        };
        assert!(alg.len() <= MAX_ECHOED_ALG + 3, "{alg}");
        assert!(alg.starts_with("\"é") && alg.ends_with("..."), "{alg}");
    }

    #[test]
    fn missing_alg_is_refused() {
        assert_eq!(
            verify_header(r#"{"typ":"JWT"}"#),
            Err(AuthError::MissingAlgorithm)
        );
        assert_eq!(verify_header("{}"), Err(AuthError::MissingAlgorithm));
    }

    #[test]
    fn crit_header_is_refused() {
        let header = r#"{"alg":"HS256","crit":["b64"],"b64":false}"#;
        assert_eq!(verify_header(header), Err(AuthError::CriticalHeader));
        assert_eq!(
            verify_header(r#"{"alg":"HS256","crit":[]}"#),
            Err(AuthError::CriticalHeader)
        );
    }

    #[test]
    fn unknown_header_parameters_and_extra_claims_are_ignored() {
        assert_eq!(verify_header(r#"{"alg":"HS256"}"#), Ok(()));
        assert_eq!(
            verify_header(r#"{"typ":"at+jwt","kid":"k1","alg":"HS256"}"#),
            Ok(())
        );
        let claims = format!(r#"{{"iss":"x","sub":"{UID}","iat":1,"exp":{EXP},"x":{{"y":[1]}}}}"#);
        assert_eq!(verify_claims(&claims), Ok(()));
    }

    #[test]
    fn wrong_segment_count_is_malformed() {
        let (hc, _) = VECTOR.rsplit_once('.').expect("three segments");
        let cases = [
            ("", 1),
            ("abc", 1),
            (hc, 2),
            ("...", 4),
            (&format!("{VECTOR}.x"), 4),
            (&format!("{VECTOR}."), 4),
            (&format!("{hc}.{VECTOR}"), 5),
        ];
        for (token, found) in cases {
            assert_eq!(
                verifier().verify(UID, token, NOW),
                malformed(Malformed::SegmentCount { found }),
                "{token}"
            );
        }
        // Three empty segments: the empty header is valid base64 but not a JSON object.
        assert_eq!(
            verifier().verify(UID, "..", NOW),
            malformed(Malformed::Json { part: Part::Header })
        );
    }

    #[test]
    fn bad_base64_is_malformed() {
        let [h, c, s]: [&str; 3] = VECTOR
            .split('.')
            .collect::<Vec<_>>()
            .try_into()
            .expect("three segments");
        let cases = [
            (format!("{h}=.{c}.{s}"), Part::Header),
            (format!("{h}.{c}.{s}="), Part::Signature),
            (format!("{}.{c}.{s}", h.replace('J', "+")), Part::Header),
            (format!("{h}.{c}.{}", s.replace('_', "/")), Part::Signature),
            (format!("{h}.{c}.{s}*"), Part::Signature),
            (format!(" {h}.{c}.{s}"), Part::Header),
            (format!("{h}.{c}.{s}\n"), Part::Signature),
            (format!("{h}x.{c}.{s}"), Part::Header), // impossible length (4n + 1)
        ];
        for (token, part) in cases {
            assert_eq!(
                verifier().verify(UID, &token, NOW),
                malformed(Malformed::Base64 { part }),
                "{token}"
            );
        }
        // The claims segment is decoded only after the MAC, which already covers its text.
        let token = format!("{h}.{c}=.{s}");
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn bad_base64_claims_under_a_valid_mac_is_malformed() {
        let h = b64(HS256);
        let signing_input = format!("{h}.not*base64");
        let mut mac = new_mac(SECRET);
        mac.update(signing_input.as_bytes());
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            malformed(Malformed::Base64 { part: Part::Claims })
        );
    }

    #[test]
    fn non_canonical_base64_signature_is_malformed() {
        // 32 bytes take 43 characters, the last carrying 2 unused bits: 'o' (0b101000) and
        // 'p' (0b101001) decode to the same bytes, so only 'o' is accepted.
        assert!(VECTOR.ends_with('o'));
        let token = format!("{}p", &VECTOR[..VECTOR.len() - 1]);
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            malformed(Malformed::Base64 {
                part: Part::Signature
            })
        );
    }

    #[test]
    fn non_json_header_and_claims_are_malformed() {
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP}}}"#);
        for header in [
            "not json",
            "",
            "[]",
            "\"HS256\"",
            "null",
            r#"{"alg":"HS256""#,
            "{\"alg\":\"HS256\"} x",
        ] {
            let token = sign_raw(SECRET, header, &claims);
            assert_eq!(
                verifier().verify(UID, &token, NOW),
                malformed(Malformed::Json { part: Part::Header }),
                "{header:?}"
            );
        }
        for claims in ["not json", "", "[]", "42", "{\"sub\":\"42\",", "\u{0}"] {
            assert_eq!(
                verify_claims(claims),
                malformed(Malformed::Json { part: Part::Claims }),
                "{claims:?}"
            );
        }
        // Invalid UTF-8 inside the JSON.
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(b"{\"alg\":\"\xff\"}"),
            "e30",
            "x"
        );
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            malformed(Malformed::Json { part: Part::Header })
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflow() {
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let header = format!(r#"{{"alg":"HS256","x":{deep}}}"#);
        assert_eq!(
            verify_header(&header),
            malformed(Malformed::Json { part: Part::Header })
        );
        let claims = format!(r#"{{"sub":"{UID}","exp":{EXP},"x":{deep}}}"#);
        assert!(sign_raw(SECRET, HS256, &claims).len() <= MAX_TOKEN_LEN);
        assert_eq!(
            verify_claims(&claims),
            malformed(Malformed::Json { part: Part::Claims })
        );
    }

    #[test]
    fn oversize_token_is_refused_before_decoding() {
        let token = "!".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            Err(AuthError::TooLong {
                len: MAX_TOKEN_LEN + 1,
                max: MAX_TOKEN_LEN
            })
        );
        // The longest valid token within the limit is accepted; one byte of padding claim more
        // and it is refused unread.
        let token_with_pad = |n: usize| {
            let claims = format!(r#"{{"sub":"{UID}","exp":{EXP},"pad":"{}"}}"#, "x".repeat(n));
            sign_raw(SECRET, HS256, &claims)
        };
        let n = (0..MAX_TOKEN_LEN)
            .take_while(|&n| token_with_pad(n).len() <= MAX_TOKEN_LEN)
            .last()
            .expect("a small token fits");
        assert_eq!(verifier().verify(UID, &token_with_pad(n), NOW), Ok(()));
        let too_long = token_with_pad(n + 1);
        assert!(matches!(
            verifier().verify(UID, &too_long, NOW),
            Err(AuthError::TooLong { .. })
        ));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let [h, _, s]: [&str; 3] = VECTOR
            .split('.')
            .collect::<Vec<_>>()
            .try_into()
            .expect("three segments");
        let forged = format!(r#"{{"sub":"43","exp":{EXP}}}"#);
        let token = format!("{h}.{}.{s}", b64(&forged));
        assert_eq!(
            verifier().verify(43, &token, NOW),
            Err(AuthError::BadSignature)
        );
        let later = format!(r#"{{"sub":"42","exp":{}}}"#, EXP + 1);
        let token = format!("{h}.{}.{s}", b64(&later));
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            Err(AuthError::BadSignature)
        );
        // A different header spelling changes the signed text too.
        let token = format!(
            "{}.{}",
            b64(r#"{"typ":"JWT","alg":"HS256"}"#),
            &VECTOR[h.len() + 1..]
        );
        assert_eq!(
            verifier().verify(UID, &token, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn truncated_or_empty_signature_is_bad_signature() {
        let (hc, s) = VECTOR.rsplit_once('.').expect("three segments");
        for token in [
            format!("{hc}."),
            format!("{hc}.{}", &s[..40]),
            format!("{hc}.{s}AAAA"),
        ] {
            assert_eq!(
                verifier().verify(UID, &token, NOW),
                Err(AuthError::BadSignature),
                "{token}"
            );
        }
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let shown = format!("{:?}", JwtVerifier::new(b"s3cret"));
        assert_eq!(shown, "JwtVerifier { .. }");
    }

    /// xorshift64: deterministic, dependency-free randomness for the fuzz loop.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
            items[self.below(items.len())]
        }

        fn char(&mut self) -> char {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\":,\\";
            match self.below(20) {
                0 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                1 => '.',
                _ => char::from(ALPHABET[self.below(ALPHABET.len())]),
            }
        }
    }

    fn mutate(rng: &mut Rng, token: &str) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        for _ in 0..=rng.below(3) {
            let at = rng.below(chars.len() + 1);
            match rng.below(6) {
                0 if at < chars.len() => chars[at] = rng.char(),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                2 => chars.insert(at, rng.char()),
                3 => chars.truncate(at),
                4 => {
                    let tail: Vec<char> = chars[at..].to_vec();
                    chars.extend(tail);
                }
                _ if chars.len() >= 2 => {
                    let (a, b) = (rng.below(chars.len()), rng.below(chars.len()));
                    chars.swap(a, b);
                }
                _ => chars.push(rng.char()),
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn fuzz_random_and_mutated_tokens_never_panic_and_are_refused() {
        let verifier = verifier();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds = [
            VECTOR.to_owned(),
            sign_hs256(SECRET, UID, u64::MAX),
            sign_hs256(SECRET, 0, 0),
        ];

        for _ in 0..5_000 {
            let len = rng.below(300);
            let token: String = (0..len).map(|_| rng.char()).collect();
            let now = rng.next();
            assert!(
                verifier.verify(rng.next(), &token, now).is_err(),
                "{token:?}"
            );
        }

        for _ in 0..20_000 {
            let seed = &seeds[rng.below(seeds.len())];
            let token = mutate(&mut rng, seed);
            if token != *seed {
                assert!(verifier.verify(UID, &token, NOW).is_err(), "{token:?}");
            }
        }

        // Well-signed tokens with hostile contents: any outcome but a panic.
        let headers: [&str; 8] = [
            HS256,
            r#"{"alg":"none"}"#,
            r#"{"alg":null}"#,
            r#"{"alg":"HS256","crit":1}"#,
            r#"{"alg":["HS256"]}"#,
            "{",
            "",
            r#"{"alg":"HS256","alg":"none"}"#,
        ];
        let values: [&str; 14] = [
            "\"42\"",
            "42",
            "-1",
            "1e400",
            "18446744073709551615",
            "18446744073709551616",
            "null",
            "\"\"",
            "[]",
            "{}",
            "\"\\ud800\"",
            "0.5",
            "\"0\"",
            "true",
        ];
        let keys: [&str; 5] = ["sub", "exp", "nbf", "iat", "alg"];
        for _ in 0..5_000 {
            let mut claims = String::from("{");
            for i in 0..rng.below(5) {
                if i > 0 {
                    claims.push(',');
                }
                claims.push_str(&format!("\"{}\":{}", rng.pick(&keys), rng.pick(&values)));
            }
            if rng.below(10) != 0 {
                claims.push('}');
            }
            let token = sign_raw(SECRET, rng.pick(&headers), &claims);
            let _ = verifier.verify(rng.next() % 100, &token, rng.next());
        }
    }
}
