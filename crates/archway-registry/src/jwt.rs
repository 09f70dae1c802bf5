//! HS256 JSON Web Tokens (RFC 7519, RFC 7515 compact form), just what Docker's token flow
//! needs: the registry signs its own tokens and verifies them, and clients treat them as
//! opaque strings.
//!
//! Verification is strict: exactly three base64url parts, a header whose `alg` is `HS256`
//! (nothing else is accepted, `none` least of all) and that names no critical extension, a
//! signature compared in constant time before the payload is even decoded, then `exp`
//! (required) and `nbf` (if present) checked against the clock with a small leeway.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

/// Longest token accepted (an access list for many repositories stays far below this).
const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT in compact form")]
    Malformed,
    #[error("token algorithm must be HS256")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims are invalid: {0}")]
    Claims(String),
}

/// An HMAC-SHA256 key that signs and verifies tokens.
#[derive(Clone)]
pub struct Hs256Key {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Hs256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hs256Key(..)")
    }
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Times {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
}

/// `{"alg":"HS256","typ":"JWT"}`, base64url-encoded.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

impl Hs256Key {
    pub fn new(secret: &[u8]) -> Self {
        Hs256Key {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length")),
        }
    }

    fn mac_of(&self, signing_input: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac
    }

    /// The compact token for `claims`.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let payload = serde_json::to_vec(claims)
            .unwrap_or_else(|e| unreachable!("token claims serialise: {e}"));
        let mut token = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(payload));
        let tag = self.mac_of(token.as_bytes()).finalize().into_bytes();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag));
        token
    }

    /// Verifies `token` at time `now` (seconds since the epoch) and returns its claims.
    pub fn verify<T: DeserializeOwned>(&self, token: &str, now: u64) -> Result<T, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        if header.alg != "HS256" || header.crit.is_some() {
            return Err(JwtError::Algorithm);
        }
        let signature = decode(signature)?;
        let signing_input = &token[..token.len() - signature_len(token)];
        self.mac_of(signing_input.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| JwtError::Signature)?;
        let payload = decode(payload)?;
        let times: Times =
            serde_json::from_slice(&payload).map_err(|e| JwtError::Claims(e.to_string()))?;
        if now > times.exp.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::Expired);
        }
        if times
            .nbf
            .is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf)
        {
            return Err(JwtError::NotYetValid);
        }
        serde_json::from_slice(&payload).map_err(|e| JwtError::Claims(e.to_string()))
    }
}

/// Length of `.<signature>` at the end of a three-part token.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |i| token.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn key() -> Hs256Key {
        Hs256Key::new(b"0123456789abcdef0123456789abcdef")
    }

    fn forge(header: &Value, payload: &Value, key: &Hs256Key) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let tag = key.mac_of(input.as_bytes()).finalize().into_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    #[test]
    fn round_trip_and_the_header_is_standard() {
        let t = key().sign(&json!({"sub": "alice", "exp": 1000, "nbf": 900}));
        assert!(t.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
        let v: Value = key().verify(&t, 950).unwrap();
        assert_eq!(v["sub"], "alice");
    }

    #[test]
    fn matches_an_independent_hs256_vector() {
        // RFC 7515 appendix A.1's key and input, signed as HS256.
        let k = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let tag = Hs256Key::new(&k)
            .mac_of(input.as_bytes())
            .finalize()
            .into_bytes();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(tag),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        let token = format!("{input}.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        let v: Value = Hs256Key::new(&k).verify(&token, 1_300_819_000).unwrap();
        assert_eq!(v["iss"], "joe");
        assert_eq!(
            Hs256Key::new(&k).verify::<Value>(&token, 1_300_819_400),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn refuses_what_it_must() {
        let k = key();
        let good = k.sign(&json!({"exp": 1000}));
        // Expired (past the leeway) and not yet valid.
        assert_eq!(
            k.verify::<Value>(&good, 1000 + LEEWAY_SECS + 1),
            Err(JwtError::Expired)
        );
        assert!(k.verify::<Value>(&good, 1000 + LEEWAY_SECS).is_ok());
        let early = k.sign(&json!({"exp": 1000, "nbf": 500}));
        assert_eq!(k.verify::<Value>(&early, 400), Err(JwtError::NotYetValid));
        // Without exp.
        let forever = k.sign(&json!({"sub": "x"}));
        assert!(matches!(
            k.verify::<Value>(&forever, 0),
            Err(JwtError::Claims(_))
        ));
        // Another key, a flipped signature bit, a changed payload.
        assert_eq!(
            Hs256Key::new(b"other").verify::<Value>(&good, 0),
            Err(JwtError::Signature)
        );
        let mut bytes = good.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(k.verify::<Value>(&flipped, 0), Err(JwtError::Signature));
        let parts: Vec<&str> = good.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999}"#),
            parts[2]
        );
        assert_eq!(k.verify::<Value>(&swapped, 0), Err(JwtError::Signature));
        // alg none / another algorithm / critical extensions, even when "signed".
        for header in [
            json!({"alg": "none"}),
            json!({"alg": "HS512"}),
            json!({"alg": "hs256"}),
            json!({"alg": "HS256", "crit": ["exp"]}),
        ] {
            let t = forge(&header, &json!({"exp": 1000}), &k);
            assert_eq!(
                k.verify::<Value>(&t, 0),
                Err(JwtError::Algorithm),
                "{header}"
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"exp":1000}"#)
        );
        assert_eq!(k.verify::<Value>(&unsigned, 0), Err(JwtError::Algorithm));
        // Shapes that are not tokens at all.
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                k.verify::<Value>(bad, 0),
                Err(JwtError::Malformed),
                "{bad:.20}"
            );
        }
    }
}
