//! What a token claims ([`Claims`], [`Audience`]) and why one is refused
//! ([`TokenError`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whom a token admits: its `aud` claim.
///
/// A `join` token cannot open the root socket and a `root` token cannot open a `/join`
/// socket, so a leaked join token never grants the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// A newcomer on `/join` (claim `"join"`).
    Join,
    /// The root of the overlay (claim `"root"`).
    Root,
}

impl Audience {
    /// The claim string: `"join"` or `"root"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Root => "root",
        }
    }

    /// The audience named by a claim string, if it is one of ours.
    pub(crate) fn from_claim(claim: &str) -> Option<Self> {
        match claim {
            "join" => Some(Self::Join),
            "root" => Some(Self::Root),
            _ => None,
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a token, as minted and as returned by a successful verification.
///
/// Times are seconds since the Unix epoch (JWT `NumericDate`), as integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry (`exp`, required): the token is refused from `exp` + [`LEEWAY_SECS`] on.
    ///
    /// [`LEEWAY_SECS`]: super::LEEWAY_SECS
    pub exp: u64,
    /// Whom the token admits (`aud`), serialized as `"join"` or `"root"`.
    pub aud: Audience,
    /// The overlay the token is for (`ovl`); a token for one overlay opens no other.
    pub ovl: String,
    /// Who holds the token (`sub`), opaque to the server; useful in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Not before (`nbf`): the token is refused until `nbf` - [`LEEWAY_SECS`].
    ///
    /// [`LEEWAY_SECS`]: super::LEEWAY_SECS
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a token was refused.
///
/// The messages are safe to log and to send to the client: none includes the token or
/// any of its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The request carries no token.
    #[error("no token")]
    Missing,
    /// The token is longer than [`MAX_TOKEN_BYTES`]; it was not parsed.
    ///
    /// [`MAX_TOKEN_BYTES`]: super::MAX_TOKEN_BYTES
    #[error("token too large")]
    TooLarge,
    /// Not a compact JWS: wrong number of segments, bad base64url, a header or claims
    /// that are not the expected JSON (a missing or non-integer `exp`, a missing `ovl`,
    /// an `aud` that is not a string), or an algorithm nobody supports (such as
    /// `none`).
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the configured key, or the token names
    /// another algorithm than the key's.
    #[error("token signature invalid")]
    BadSignature,
    /// Past its `exp`, leeway included.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`, leeway included.
    #[error("token not yet valid")]
    NotYetValid,
    /// Its `aud` is not the audience of this route.
    #[error("token for another audience")]
    WrongAudience,
    /// Its `ovl` is not this overlay.
    #[error("token for another overlay")]
    WrongOverlay,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_serialize_with_the_audience_as_a_string_and_without_absent_options() {
        let claims = Claims {
            exp: 10,
            aud: Audience::Root,
            ovl: "default".to_owned(),
            sub: None,
            nbf: None,
        };
        let json = serde_json::to_string(&claims).expect("serialize");
        assert_eq!(json, r#"{"exp":10,"aud":"root","ovl":"default"}"#);
        let back: Claims = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, claims);
        let join: Audience = serde_json::from_str(r#""join""#).expect("join");
        assert_eq!(join, Audience::Join);
        assert_eq!(Audience::from_claim("root"), Some(Audience::Root));
        assert_eq!(Audience::from_claim("Root"), None);
        assert_eq!(Audience::Join.to_string(), "join");
    }
}
