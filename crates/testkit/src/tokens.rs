//! The tests' tokens: one HS256 key ([`KEY`], [`key`] for a server's `token_key`) and
//! join and root tokens minted with it, so a test says which token it needs and not how
//! one is made.
//!
//! A test that needs a token this key cannot give (a forged signature, a specific
//! `sub`) mints it itself with a [`TokenKey`] of its own.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};

/// The HS256 shared secret of the tests' servers (at least 32 bytes, as HS256 wants).
pub const KEY: &[u8] = b"the test kit's HS256 key, at least 32 bytes long";

/// How long [`join_token`] and [`root_token`] are valid, in seconds: ten minutes, far
/// longer than any test.
pub const VALID_SECS: u64 = 600;

/// The `sub` of every token minted here: opaque to the server, it only shows in its
/// logs.
const SUB: &str = "testkit";

/// [`KEY`] as a server's `token_key`; it also verifies every token minted here.
///
/// # Panics
/// Never in practice: [`KEY`] is a non-empty shared secret, which is always a key.
#[must_use]
pub fn key() -> Arc<TokenKey> {
    Arc::new(TokenKey::from_bytes(KEY).expect("KEY is a valid HS256 key"))
}

/// Now, in seconds since the Unix epoch: the unit of a token's `exp`.
///
/// # Panics
/// If the system clock is set before 1970.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is after 1970")
        .as_secs()
}

/// A token for `aud` in overlay `ovl`, valid until `exp` (seconds since the Unix epoch;
/// one in the past makes an expired token), signed with [`KEY`].
///
/// # Panics
/// Never in practice: an HS256 key always signs.
#[must_use]
pub fn token(aud: Audience, ovl: &str, exp: u64) -> String {
    let claims = Claims {
        exp,
        aud,
        ovl: ovl.to_owned(),
        sub: Some(SUB.to_owned()),
        nbf: None,
    };
    key().mint(&claims).expect("an HS256 key signs")
}

/// A join token for overlay `ovl` (the default overlay's name is `"default"`), valid
/// for [`VALID_SECS`].
#[must_use]
pub fn join_token(ovl: &str) -> String {
    token(Audience::Join, ovl, unix_now() + VALID_SECS)
}

/// A root token for overlay `ovl`, valid for [`VALID_SECS`]: it stands in for the
/// overlay's secret, or opens a dynamic overlay of that name.
#[must_use]
pub fn root_token(ovl: &str) -> String {
    token(Audience::Root, ovl, unix_now() + VALID_SECS)
}
