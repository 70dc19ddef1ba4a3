//! Opt-in token auth (JWT), IO-free: which key checks a token, what a valid token
//! claims, where a request carries it, and how often an address may fail.
//!
//! A token is a compact JWS (`header.claims.signature`) signed with HS256 (a shared
//! secret) or EdDSA (Ed25519). Its claims say whom it is for (`aud`: `"join"` or
//! `"root"`), which overlay (`ovl`), until when (`exp`, required) and optionally from
//! when (`nbf`) and for whom (`sub`). Time comes in as an argument: nothing here reads a
//! clock, a socket or (apart from [`TokenKey::from_file`]) a file.
//!
//! # Layout
//! - `claims`: [`Audience`], [`Claims`] and [`TokenError`], what verification refuses.
//! - `key`: [`TokenKey`], which verifies (and, with a secret or private key, mints)
//!   tokens, and [`KeyError`].
//! - `carrier`: where the token travels: [`bearer_from_subprotocols`] for the
//!   `Sec-WebSocket-Protocol: bearer, <token>` header browsers can set, and
//!   [`token_from_query`] for `?token=<token>`.
//! - `throttle`: [`FailureThrottle`], a bounded per-address count of failed attempts.

mod carrier;
mod claims;
mod key;
mod throttle;

pub use carrier::{BEARER_SUBPROTOCOL, bearer_from_subprotocols, token_from_query};
pub use claims::{Audience, Claims, TokenError};
pub use key::{KeyError, LEEWAY_SECS, MAX_TOKEN_BYTES, TokenKey};
pub use throttle::FailureThrottle;
