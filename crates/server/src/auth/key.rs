//! [`TokenKey`]: the key that verifies tokens (and mints them, given a secret or a
//! private key).
//!
//! The key decides the algorithm: a shared secret means HS256 and an Ed25519 key means
//! EdDSA. A token naming any other algorithm is refused, so neither `alg: none` nor
//! "sign HS256 with the public key" can pass. Signature checks use `jsonwebtoken`; its
//! own clock-based `exp`/`nbf` checks are off and [`TokenKey::verify`] checks the
//! times against the `now_unix` it is given.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::EllipticCurve;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use super::claims::{Audience, Claims, TokenError};

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
///
/// Our tokens are a few hundred bytes; the bound caps the base64 and JSON work a
/// stranger can cause per attempt.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Length of an Ed25519 public key.
const ED25519_PUBLIC_KEY_BYTES: usize = 32;

/// Why a key could not be loaded or could not mint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read the key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it returned.
        #[source]
        source: std::io::Error,
    },
    /// The key is empty (a lone trailing newline counts as empty).
    #[error("the key is empty")]
    Empty,
    /// The key is PEM but neither an Ed25519 `PUBLIC KEY` nor an Ed25519 PKCS#8
    /// `PRIVATE KEY` (RSA, ECDSA, X25519 or a certificate, say).
    #[error("the PEM key is not an Ed25519 PUBLIC KEY or PKCS#8 PRIVATE KEY")]
    UnsupportedPem,
    /// The PEM names Ed25519 but its key material is invalid.
    #[error("the Ed25519 key is invalid")]
    InvalidEd25519,
    /// `jsonwebtoken` has no crypto backend (its features were unified so that both or
    /// neither backend is enabled).
    #[error("no jsonwebtoken crypto provider is available")]
    NoCryptoProvider,
    /// Minting needs the shared secret or the private key; this is a public key.
    #[error("a public key verifies tokens but cannot mint them")]
    VerifyOnly,
    /// Signing the token failed.
    #[error("cannot sign the token")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The key tokens are checked (and, unless it is a public key, minted) with.
///
/// Built once at startup from the key file's bytes; `Debug` shows the algorithm, never
/// key material.
#[derive(Clone)]
pub struct TokenKey {
    /// HS256 or EdDSA: the only algorithm accepted.
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// `None` for an Ed25519 public key.
    encoding: Option<EncodingKey>,
    /// Signature and algorithm checks only: no required claims and no clock (see the
    /// module docs).
    validation: Validation,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("algorithm", &self.algorithm_name())
            .field("can_mint", &self.can_mint())
            .finish_non_exhaustive()
    }
}

/// The claims as they come off the wire: `aud` as a plain string so that an unknown
/// audience is [`TokenError::WrongAudience`] rather than [`TokenError::Malformed`].
#[derive(Deserialize)]
struct WireClaims {
    exp: u64,
    aud: String,
    ovl: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    nbf: Option<u64>,
}

impl TokenKey {
    /// Reads a key file; see [`TokenKey::from_bytes`].
    ///
    /// # Errors
    /// [`KeyError::Read`] if the file cannot be read, otherwise as
    /// [`TokenKey::from_bytes`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Builds a key from a key file's contents:
    /// - PEM `PUBLIC KEY` (Ed25519, SPKI): verifies EdDSA tokens only;
    /// - PEM `PRIVATE KEY` (Ed25519, PKCS#8): mints and verifies EdDSA tokens;
    /// - any other PEM: refused ([`KeyError::UnsupportedPem`]) rather than taken for a
    ///   shared secret;
    /// - anything else: an HS256 shared secret, all of the bytes except one trailing
    ///   `\n` or `\r\n`.
    ///
    /// # Errors
    /// [`KeyError`] if the key is empty, an unsupported or invalid PEM, or
    /// `jsonwebtoken` has no crypto backend.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let provider = CryptoProvider::try_get_default().ok_or(KeyError::NoCryptoProvider)?;
        match pem_label(bytes) {
            Some(b"PUBLIC KEY") => Self::ed25519_public(provider, bytes),
            Some(b"PRIVATE KEY") => Self::ed25519_private(provider, bytes),
            Some(_) => Err(KeyError::UnsupportedPem),
            None => Self::shared_secret(bytes),
        }
    }

    fn shared_secret(bytes: &[u8]) -> Result<Self, KeyError> {
        let secret = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        // Both constructors fail only on an empty secret, checked above.
        let decoding = DecodingKey::from_secret(secret).map_err(|_| KeyError::Empty)?;
        let encoding = EncodingKey::from_secret(secret).map_err(|_| KeyError::Empty)?;
        Ok(Self::new(Algorithm::HS256, decoding, Some(encoding)))
    }

    fn ed25519_public(provider: &CryptoProvider, pem: &[u8]) -> Result<Self, KeyError> {
        let decoding = DecodingKey::from_ed_pem(pem).map_err(|_| KeyError::UnsupportedPem)?;
        check_ed25519_public(provider, &decoding)?;
        Ok(Self::new(Algorithm::EdDSA, decoding, None))
    }

    fn ed25519_private(provider: &CryptoProvider, pem: &[u8]) -> Result<Self, KeyError> {
        let encoding = EncodingKey::from_ed_pem(pem).map_err(|_| KeyError::UnsupportedPem)?;
        // Parses the PKCS#8 document now rather than on the first mint.
        (provider.signer_factory)(&Algorithm::EdDSA, &encoding)
            .map_err(|_| KeyError::InvalidEd25519)?;
        let public = (provider.key_utils.ed_pub_components_from_private_key)(
            encoding.as_bytes(),
            &EllipticCurve::Ed25519,
        )
        .map_err(|_| KeyError::InvalidEd25519)?;
        let decoding = DecodingKey::from_ed_der(&public);
        check_ed25519_public(provider, &decoding)?;
        Ok(Self::new(Algorithm::EdDSA, decoding, Some(encoding)))
    }

    fn new(algorithm: Algorithm, decoding: DecodingKey, encoding: Option<EncodingKey>) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            algorithm,
            decoding,
            encoding,
            validation,
        }
    }

    /// The JWS algorithm of this key: `"HS256"` or `"EdDSA"` (for logs).
    #[must_use]
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            Algorithm::EdDSA => "EdDSA",
            _ => "HS256",
        }
    }

    /// Whether this key can [`mint`](Self::mint) (a shared secret or a private key).
    #[must_use]
    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    /// Checks `token` for `audience` on `overlay` at `now_unix` (seconds since the Unix
    /// epoch) and returns its claims.
    ///
    /// Checks, in order: presence, size ([`MAX_TOKEN_BYTES`]), shape, algorithm and
    /// signature, then the claims (`aud`, `ovl`, then `exp` and `nbf` with
    /// [`LEEWAY_SECS`] of leeway). Never panics, whatever the input.
    ///
    /// # Errors
    /// The [`TokenError`] of the first check that fails.
    pub fn verify(
        &self,
        token: &str,
        audience: Audience,
        overlay: &str,
        now_unix: u64,
    ) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let wire = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(|error| refusal(error.kind()))?
            .claims;
        if Audience::from_claim(&wire.aud) != Some(audience) {
            return Err(TokenError::WrongAudience);
        }
        if wire.ovl != overlay {
            return Err(TokenError::WrongOverlay);
        }
        if now_unix >= wire.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if wire
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(Claims {
            exp: wire.exp,
            aud: audience,
            ovl: wire.ovl,
            sub: wire.sub,
            nbf: wire.nbf,
        })
    }

    /// Signs `claims` into a compact token with this key's algorithm.
    ///
    /// # Errors
    /// [`KeyError::VerifyOnly`] for a public key; [`KeyError::Sign`] if signing fails.
    pub fn mint(&self, claims: &Claims) -> Result<String, KeyError> {
        let encoding = self.encoding.as_ref().ok_or(KeyError::VerifyOnly)?;
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, encoding)
            .map_err(|error| KeyError::Sign(Box::new(error)))
    }
}

/// The label of the first PEM block (`PUBLIC KEY` in `-----BEGIN PUBLIC KEY-----`), or
/// `None` if `bytes` hold no PEM header.
fn pem_label(bytes: &[u8]) -> Option<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let start = bytes.windows(BEGIN.len()).position(|w| w == BEGIN)? + BEGIN.len();
    let rest = &bytes[start..];
    let end = rest
        .windows(5)
        .position(|w| w == b"-----")
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Refuses an Ed25519 public key that `jsonwebtoken` would choke on when verifying (it
/// slices the first 32 bytes without checking the length).
fn check_ed25519_public(provider: &CryptoProvider, key: &DecodingKey) -> Result<(), KeyError> {
    let bytes = key
        .try_get_as_bytes()
        .map_err(|_| KeyError::InvalidEd25519)?;
    if bytes.len() != ED25519_PUBLIC_KEY_BYTES {
        return Err(KeyError::InvalidEd25519);
    }
    (provider.verifier_factory)(&Algorithm::EdDSA, key).map_err(|_| KeyError::InvalidEd25519)?;
    Ok(())
}

/// What a `jsonwebtoken` decoding error means for the client. Only shape errors are
/// [`TokenError::Malformed`]; everything else (signature, algorithm, and kinds added
/// later) is a [`TokenError::BadSignature`].
fn refusal(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_) => TokenError::Malformed,
        _ => TokenError::BadSignature,
    }
}

#[cfg(test)]
mod tests;
