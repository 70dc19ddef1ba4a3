//! Ephemeral TURN credentials (the "TURN REST API"), what `GET /ice-servers` answers.
//!
//! The server and the TURN server share a secret; neither stores users. A credential
//! is a pair:
//! - username `<expiry>:<user>`, where `<expiry>` is the Unix time (seconds) after which
//!   the TURN server refuses it and `<user>` names whoever asked (the join token's
//!   `sub` when joins need a token, else a random label);
//! - password `base64(HMAC-SHA1(secret, username))`.
//!
//! coturn checks such credentials with `use-auth-secret` and `static-auth-secret`
//! (docs/server.md shows the lines that pair the two servers). Everything here is
//! IO-free: the caller passes the time and the user label.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

/// Default lifetime of a credential: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest accepted lifetime: a credential must outlive the join that fetched it.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// Longest accepted lifetime: 30 days.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Default number of `/ice-servers` requests one client address may make per minute.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 120;

/// Longest `<user>` part taken from a token's `sub`; longer ones get a random label.
pub const MAX_USER_LEN: usize = 128;

/// The TURN servers the server hands out credentials for. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// The secret shared with the TURN server (coturn's `static-auth-secret`). Never
    /// logged.
    pub secret: String,
    /// TURN URIs: `turn:host:3478?transport=udp`, `turn:host:3478?transport=tcp`,
    /// `turns:host:5349?transport=tcp`.
    pub uris: Vec<String>,
    /// STUN URIs handed out beside them (`stun:host:3478`), without credentials.
    pub stun_uris: Vec<String>,
    /// How long a credential is valid from the moment it is handed out.
    pub ttl: Duration,
    /// Requests one client address (IPv6: one /64) may make per minute; the excess
    /// gets HTTP 429.
    pub requests_per_minute: u32,
}

impl TurnConfig {
    /// TURN servers at `uris` sharing `secret`, with the default TTL and rate.
    #[must_use]
    pub fn new(secret: impl Into<String>, uris: Vec<String>) -> Self {
        Self {
            secret: secret.into(),
            uris,
            stun_uris: Vec::new(),
            ttl: DEFAULT_TTL,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
        }
    }

    /// What is wrong with this configuration, one line each.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.secret.trim().is_empty() {
            problems.push("the TURN secret is empty".to_owned());
        }
        if self.uris.is_empty() {
            problems.push("a TURN secret needs at least one TURN URI (--turn-uri)".to_owned());
        }
        for uri in &self.uris {
            if !is_uri(uri, &["turn:", "turns:"]) {
                problems.push(format!(
                    "TURN URI {uri:?} must start with turn: or turns: and name a host"
                ));
            }
        }
        for uri in &self.stun_uris {
            if !is_uri(uri, &["stun:", "stuns:"]) {
                problems.push(format!(
                    "STUN URI {uri:?} must start with stun: or stuns: and name a host"
                ));
            }
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            problems.push(format!(
                "the TURN credential TTL must be from {} s to {} s",
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs()
            ));
        }
        if self.requests_per_minute == 0 {
            problems.push("ice_servers_per_minute must be greater than 0".to_owned());
        }
        problems
    }

    /// The answer to one request at Unix time `now` for `user` (see [`user_label`]):
    /// fresh credentials valid until `now + ttl`.
    #[must_use]
    pub fn answer(&self, now: u64, user: &str) -> IceServers {
        let ttl = self.ttl.as_secs();
        let username = rest_username(now.saturating_add(ttl), user);
        let credential = rest_password(self.secret.as_bytes(), &username);
        let mut ice_servers = vec![IceServer {
            urls: self.uris.clone(),
            username: Some(username),
            credential: Some(credential),
        }];
        if !self.stun_uris.is_empty() {
            ice_servers.push(IceServer {
                urls: self.stun_uris.clone(),
                username: None,
                credential: None,
            });
        }
        IceServers { ice_servers, ttl }
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("secret", &"<redacted>")
            .field("uris", &self.uris)
            .field("stun_uris", &self.stun_uris)
            .field("ttl", &self.ttl)
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

/// Whether `uri` has one of `schemes` and something after it with no whitespace.
fn is_uri(uri: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|scheme| {
        uri.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('?'))
    }) && !uri.chars().any(char::is_whitespace)
}

/// What `GET /ice-servers` answers, the shape `RTCPeerConnection` takes as its
/// `iceServers`, plus the credentials' lifetime in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServers {
    /// The TURN servers with their credential, then the STUN servers if any.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// One entry of [`IceServers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// The servers' URIs.
    pub urls: Vec<String>,
    /// `<expiry>:<user>`, for TURN servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password, for TURN servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The REST username: `<expiry>:<user>`.
#[must_use]
pub fn rest_username(expiry: u64, user: &str) -> String {
    format!("{expiry}:{user}")
}

/// The REST password of `username`: `base64(HMAC-SHA1(secret, username))`.
#[must_use]
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The `<user>` of a username: the token's `sub` when it is 1 to [`MAX_USER_LEN`] of
/// `A-Z a-z 0-9 . _ - @`, else `anonymous` (TURN servers log the username; anything
/// else in a `sub` could forge log lines or a second `:` field).
#[must_use]
pub fn user_label(sub: Option<&str>) -> &str {
    sub.filter(|sub| {
        (1..=MAX_USER_LEN).contains(&sub.len())
            && sub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    })
    .unwrap_or("anonymous")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_matches_an_independent_hmac_sha1() {
        // printf %s '1767225600:alice' | openssl dgst -sha1 -hmac 'turn-shared-secret' -binary | base64
        assert_eq!(
            rest_password(b"turn-shared-secret", "1767225600:alice"),
            "w2XZTBd9ZzVn1zdnGsqqJT/XpRo="
        );
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            rest_password(b"Jefe", "what do ya want for nothing?"),
            STANDARD.encode([
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
                0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79
            ])
        );
    }

    #[test]
    fn an_answer_is_the_rtc_configuration_shape_with_fresh_credentials() {
        let mut config = TurnConfig::new(
            "turn-shared-secret",
            vec!["turn:127.0.0.1:3478?transport=udp".to_owned()],
        );
        config.ttl = Duration::from_secs(600);
        config.stun_uris = vec!["stun:127.0.0.1:3478".to_owned()];
        let answer = config.answer(1_767_225_000, "alice");
        let json = serde_json::to_value(&answer).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "iceServers": [
                    {
                        "urls": ["turn:127.0.0.1:3478?transport=udp"],
                        "username": "1767225600:alice",
                        "credential": "w2XZTBd9ZzVn1zdnGsqqJT/XpRo="
                    },
                    { "urls": ["stun:127.0.0.1:3478"] }
                ],
                "ttl": 600
            })
        );
        assert_ne!(config.answer(1_767_225_001, "alice"), answer);
    }

    #[test]
    fn only_plain_subjects_become_the_user() {
        assert_eq!(user_label(Some("alice@example.org")), "alice@example.org");
        assert_eq!(user_label(None), "anonymous");
        assert_eq!(user_label(Some("")), "anonymous");
        assert_eq!(user_label(Some("a:b")), "anonymous");
        assert_eq!(user_label(Some("line\nbreak")), "anonymous");
        assert_eq!(user_label(Some(&"x".repeat(MAX_USER_LEN + 1))), "anonymous");
    }

    #[test]
    fn bad_configurations_are_reported_and_the_secret_never_shown() {
        let good = TurnConfig::new("s3cret-value", vec!["turns:turn.example.org:5349".into()]);
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        assert!(!format!("{good:?}").contains("s3cret-value"));
        let mut bad = TurnConfig::new(" ", vec!["stun:x".into(), "turn:".into()]);
        bad.stun_uris = vec!["turn:x".into()];
        bad.ttl = Duration::from_secs(5);
        bad.requests_per_minute = 0;
        assert_eq!(bad.problems().len(), 6, "{:?}", bad.problems());
        assert_eq!(
            TurnConfig::new("s", Vec::new()).problems().len(),
            1,
            "no URI"
        );
    }
}
