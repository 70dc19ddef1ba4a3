//! Server configuration: a plain struct with defaults, validated before anything binds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bootstrap_protocol::paths::is_url_safe_secret;
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::auth::TokenKey;
use crate::route::{DEFAULT_OVERLAY, MAX_CREDENTIAL_LEN, is_valid_overlay_name};
pub use crate::tls::TlsFiles;
use crate::turn::TurnConfig;

/// Everything the server needs to run. Build it with [`Config::new`] and adjust fields.
#[derive(Clone)]
pub struct Config {
    /// The default overlay's root secret: its root connects on
    /// `/<secret>/webrtc-bootstrap-root`. URL-safe ([`is_url_safe_secret`]), not `.` or
    /// `..`; empty when only named overlays or root tokens are used. Never logged.
    /// Anything shorter than [`MIN_SECRET_LEN`] is accepted here (tests use short ones)
    /// but reported by [`Config::weak_secrets`].
    pub secret: String,
    /// Named overlays by name, each at `/o/NAME/...` with its own root, ids and limits.
    pub overlays: BTreeMap<String, OverlayConfig>,
    /// The key that signs join and root tokens (JWT); `None` turns token auth off.
    pub token_key: Option<Arc<TokenKey>>,
    /// Whether a `/join` socket needs a join token (needs `token_key`).
    pub join_auth: JoinAuth,
    /// Whether a valid root token for an overlay that is not configured creates it; it
    /// is removed once its root and its last `/join` socket have left.
    pub dynamic_overlays: bool,
    /// TURN servers to hand out ephemeral credentials for at `GET /ice-servers`
    /// (`[/o/NAME][/t/TOKEN]/ice-servers`); `None` answers 404 there.
    pub turn: Option<TurnConfig>,
    /// Most overlays at once, configured ones and the default included.
    pub max_overlays: usize,
    /// Lifetime of every `/join` socket, from the moment it opens (JS `timeout`, 30 s).
    pub timeout: Duration,
    /// Interval of the `"heartbeat"` text frame and of the WebSocket ping sent to the root.
    pub heartbeat_interval: Duration,
    /// How long the root may leave a ping unanswered before it is dropped as dead.
    pub root_ping_timeout: Duration,
    /// Seed of the id generator; `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// Directory served as static files at `/` (the JS server serves `public/`).
    pub public: Option<PathBuf>,
    /// Largest accepted WebSocket message, in bytes, from [`MIN_FRAME_BYTES`] to
    /// [`MAX_FRAME_BYTES`]. Larger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Most `/join` sockets open at once in all overlays; the excess gets HTTP 503.
    pub max_prospects: usize,
    /// Sustained messages per second one socket may send before its messages are dropped.
    pub rate_per_second: u32,
    /// Messages one socket may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Dropped bad messages (malformed, not an object, invalid UTF-8, over the rate) after
    /// which the socket is closed (1007 for bad payloads, 1008 for floods).
    pub max_bad_messages: u32,
    /// Outbound queue of one `/join` socket, in messages.
    pub join_queue: usize,
    /// Outbound queue of the root socket, in messages.
    pub root_queue: usize,
    /// Outbound queue of one `/join` socket, in bytes (raised to `max_frame_bytes` if
    /// smaller, so that any message fits).
    pub join_queue_bytes: usize,
    /// Outbound queue of the root socket, in bytes (raised to `max_frame_bytes` if
    /// smaller).
    pub root_queue_bytes: usize,
    /// Bytes of the root's queue one client (an address; an IPv6 /64) may hold, through
    /// however many `/join` sockets: a flood from one client leaves room for the others
    /// (raised to `max_frame_bytes` if smaller).
    pub root_bytes_per_client: usize,
    /// Bytes all outbound queues (and the writes under way) may hold together; a
    /// message that would exceed it is dropped.
    pub max_queued_bytes: usize,
    /// Bytes the sockets' unfinished incoming messages may hold together (a peer that
    /// sends half of a large message and stops); a socket that would exceed it is
    /// closed with 1013.
    pub max_reading_bytes: usize,
    /// Most connections accepted but not upgraded yet (still sending or waiting for
    /// their request); more are closed at once.
    pub max_pending_connections: usize,
    /// Most such connections from one client address (IPv6: one /64).
    pub max_pending_per_client: usize,
    /// How long one write to a socket may take; a socket that does not read for this long
    /// (its queue stays full) is closed.
    pub write_timeout: Duration,
    /// How long shutdown waits for sockets to close before giving up on them.
    pub shutdown_grace: Duration,
    /// How long the shutdown future of [`crate::serve`] starts a drain for: `/readyz`
    /// answers 503 and new `/join` upgrades get 503 at once, while the `/join` sockets
    /// already open go on until they end or this passes; then every socket is closed
    /// with 1001. Zero (the library's default) closes everything at once.
    pub drain_timeout: Duration,
    /// Client addresses that may read `GET /metrics` on the main listener (the TCP
    /// peer, never a forwarded address). Loopback only by default.
    pub metrics_allow: Vec<IpNet>,
    /// Serve TLS (`wss://`, `https://`) with this certificate chain and key; `None`
    /// serves plain TCP.
    pub tls: Option<TlsFiles>,
    /// Most `/join` sockets open at once per client (an IPv6 /64 counts as one); more
    /// get HTTP 429 with `Retry-After`. `None`: no per-client cap.
    pub max_joins_per_ip: Option<usize>,
    /// New `/join` sockets per second per client (a token bucket holding as many);
    /// more get HTTP 429 with `Retry-After`. `None`: no per-client rate.
    pub join_rate_per_ip: Option<u32>,
    /// Proxies (address ranges) whose `Forwarded` and `X-Forwarded-For` headers name
    /// the client. Empty by default: the headers are never trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Origins (`https://app.example`) whose browser pages may open sockets; an upgrade
    /// with another `Origin` gets HTTP 403. Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Refuse (403) upgrades without an `Origin` header, which Node and Rust clients
    /// do not send.
    pub require_origin: bool,
}

impl Config {
    /// A configuration with the given secret and every other field at its default:
    /// the JS server's values where it has one (`timeout` 30 s, heartbeat 15 s).
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            overlays: BTreeMap::new(),
            token_key: None,
            join_auth: JoinAuth::Open,
            dynamic_overlays: false,
            turn: None,
            max_overlays: 1000,
            timeout: Duration::from_millis(30_000),
            heartbeat_interval: Duration::from_millis(15_000),
            root_ping_timeout: Duration::from_millis(30_000),
            seed: None,
            public: None,
            max_frame_bytes: 64 * 1024,
            max_prospects: 20_000,
            rate_per_second: 50,
            rate_burst: 200,
            max_bad_messages: 10,
            join_queue: 64,
            root_queue: 4096,
            join_queue_bytes: 256 * 1024,
            root_queue_bytes: 16 * 1024 * 1024,
            root_bytes_per_client: 1024 * 1024,
            max_queued_bytes: 256 * 1024 * 1024,
            max_reading_bytes: 256 * 1024 * 1024,
            max_pending_connections: 1024,
            max_pending_per_client: 256,
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            drain_timeout: Duration::ZERO,
            metrics_allow: loopback_nets(),
            tls: None,
            max_joins_per_ip: None,
            join_rate_per_ip: None,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            require_origin: false,
        }
    }

    /// Checks every field, collecting all problems.
    ///
    /// # Errors
    /// [`ConfigError`] listing what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let tokens = self.token_key.is_some();
        if self.secret.is_empty() && self.overlays.is_empty() && !tokens {
            problems.push(
                "no root could ever connect: give a secret (--secret, SECRET or \"secret\" in \
                 the config file), an overlay (--overlay NAME=SECRET) or a token key \
                 (--token-key-file)"
                    .to_owned(),
            );
        } else if let Some(problem) = secret_problem(&self.secret) {
            problems.push(format!("the secret {problem}"));
        }
        for (name, overlay) in &self.overlays {
            if name == DEFAULT_OVERLAY {
                problems.push(format!(
                    "overlay {DEFAULT_OVERLAY:?} is the default overlay: set its secret with --secret"
                ));
            } else if !is_valid_overlay_name(name) {
                problems.push(format!(
                    "overlay name {name:?} is invalid: 1 to 64 of A-Z a-z 0-9 - . _ ~"
                ));
            }
            if overlay.secret.is_empty() && !tokens {
                problems.push(format!(
                    "overlay {name:?} has no secret and there is no token key: its root could never connect"
                ));
            } else if let Some(problem) = secret_problem(&overlay.secret) {
                problems.push(format!("the secret of overlay {name:?} {problem}"));
            }
            if overlay.max_prospects == Some(0) || overlay.timeout.is_some_and(|t| t.is_zero()) {
                problems.push(format!(
                    "overlay {name:?}: max_prospects and timeout must be greater than 0"
                ));
            }
        }
        if self.join_auth == JoinAuth::Token && !tokens {
            problems.push("join auth \"token\" needs a token key (--token-key-file)".to_owned());
        }
        if let Some(turn) = &self.turn {
            problems.extend(turn.problems());
        }
        if self.dynamic_overlays && !tokens {
            problems.push("dynamic overlays need a token key (--token-key-file)".to_owned());
        }
        if self.overlays.len() >= self.max_overlays {
            problems.push(format!(
                "max_overlays ({}) must leave room for the {} configured overlays and the default one",
                self.max_overlays,
                self.overlays.len()
            ));
        }
        let positive = [
            ("timeout", self.timeout.is_zero()),
            ("heartbeat_interval", self.heartbeat_interval.is_zero()),
            ("root_ping_timeout", self.root_ping_timeout.is_zero()),
            ("write_timeout", self.write_timeout.is_zero()),
            ("max_prospects", self.max_prospects == 0),
            ("rate_per_second", self.rate_per_second == 0),
            ("rate_burst", self.rate_burst == 0),
            ("max_bad_messages", self.max_bad_messages == 0),
            ("join_queue", self.join_queue == 0),
            ("root_queue", self.root_queue == 0),
            ("max_queued_bytes", self.max_queued_bytes == 0),
            ("max_reading_bytes", self.max_reading_bytes == 0),
            ("max_pending_connections", self.max_pending_connections == 0),
            ("max_pending_per_client", self.max_pending_per_client == 0),
            ("max_joins_per_ip", self.max_joins_per_ip == Some(0)),
            ("join_rate_per_ip", self.join_rate_per_ip == Some(0)),
        ];
        for (name, zero) in positive {
            if zero {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            problems.push(format!(
                "max_frame_bytes must be from {MIN_FRAME_BYTES} to {MAX_FRAME_BYTES}"
            ));
        }
        if let Some(dir) = self.public.as_ref().filter(|dir| !dir.is_dir()) {
            problems.push(format!("public directory {} does not exist", dir.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The overlays ([`DEFAULT_OVERLAY`] for the default one) whose secret is valid but
    /// shorter than [`MIN_SECRET_LEN`], and so guessable. The library runs with them (tests use
    /// short secrets); the `bootstrap-server` binary refuses them unless told otherwise.
    #[must_use]
    pub fn weak_secrets(&self) -> Vec<&str> {
        let default = (DEFAULT_OVERLAY, &self.secret);
        let named = self
            .overlays
            .iter()
            .map(|(name, overlay)| (name.as_str(), &overlay.secret));
        std::iter::once(default)
            .chain(named)
            .filter(|(_, secret)| {
                // Invalid ones are reported by `validate` instead.
                !secret.is_empty()
                    && secret.len() < MIN_SECRET_LEN
                    && secret_problem(secret).is_none()
            })
            .map(|(name, _)| name)
            .collect()
    }
}

/// What is wrong with a non-empty root secret, as the end of a sentence; never the
/// secret itself.
fn secret_problem(secret: &str) -> Option<String> {
    if secret.is_empty() {
        None
    } else if !is_url_safe_secret(secret) {
        Some("must be URL-safe: only A-Z a-z 0-9 - . _ ~".to_owned())
    } else if secret == "." || secret == ".." {
        // Clients resolve `/./webrtc-bootstrap-root` to `/webrtc-bootstrap-root`.
        Some("must not be \".\" or \"..\": clients remove such path segments".to_owned())
    } else if secret.len() > MAX_CREDENTIAL_LEN {
        // The router takes no longer path segment.
        Some(format!("must be at most {MAX_CREDENTIAL_LEN} characters"))
    } else {
        None
    }
}

/// One named overlay's settings; what it leaves out comes from the server's.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    /// Its root's secret (`/o/NAME/<secret>/webrtc-bootstrap-root`); empty when its root
    /// only presents root tokens. Never logged.
    pub secret: String,
    /// Most `/join` sockets open at once in this overlay (and within the server's cap).
    pub max_prospects: Option<usize>,
    /// Lifetime of its `/join` sockets.
    pub timeout: Option<Duration>,
}

impl OverlayConfig {
    /// An overlay whose root connects with `secret`, with the server's limits.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            ..Self::default()
        }
    }
}

impl fmt::Debug for OverlayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverlayConfig")
            .field("secret", &"<redacted>")
            .field("max_prospects", &self.max_prospects)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether `/join` sockets need a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JoinAuth {
    /// Anyone may open a `/join` socket, as with the JS server.
    #[default]
    Open,
    /// A `/join` socket needs a valid join token for its overlay.
    Token,
}

/// `127.0.0.0/8` and `::1/128`: the default of [`Config::metrics_allow`].
#[must_use]
pub fn loopback_nets() -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8)),
        IpNet::V6(Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128)),
    ]
}

/// Smallest `max_frame_bytes` accepted: an SDP offer alone is 500–3000 bytes.
pub const MIN_FRAME_BYTES: usize = 4096;

/// Largest `max_frame_bytes` accepted (16 MiB): a message is held whole until it is
/// complete, so this is what one client can make the server buffer, and an SDP message
/// is a few kilobytes.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Shortest root secret the `bootstrap-server` binary accepts without
/// `--allow-weak-secret` (see [`Config::weak_secrets`]): 16 random URL-safe characters
/// are about 96 bits.
pub const MIN_SECRET_LEN: usize = 16;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("secret", &"<redacted>")
            .field("overlays", &self.overlays)
            .field("token_key", &self.token_key.as_ref().map(|_| "<redacted>"))
            .field("join_auth", &self.join_auth)
            .field("dynamic_overlays", &self.dynamic_overlays)
            .field("turn", &self.turn)
            .field("max_overlays", &self.max_overlays)
            .field("timeout", &self.timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("root_ping_timeout", &self.root_ping_timeout)
            .field("seed", &self.seed)
            .field("public", &self.public)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_prospects", &self.max_prospects)
            .field("rate_per_second", &self.rate_per_second)
            .field("rate_burst", &self.rate_burst)
            .field("max_bad_messages", &self.max_bad_messages)
            .field("join_queue", &self.join_queue)
            .field("root_queue", &self.root_queue)
            .field("join_queue_bytes", &self.join_queue_bytes)
            .field("root_queue_bytes", &self.root_queue_bytes)
            .field("root_bytes_per_client", &self.root_bytes_per_client)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("max_reading_bytes", &self.max_reading_bytes)
            .field("max_pending_connections", &self.max_pending_connections)
            .field("max_pending_per_client", &self.max_pending_per_client)
            .field("write_timeout", &self.write_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("metrics_allow", &self.metrics_allow)
            .field("tls", &self.tls)
            .field("max_joins_per_ip", &self.max_joins_per_ip)
            .field("join_rate_per_ip", &self.join_rate_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("allowed_origins", &self.allowed_origins)
            .field("require_origin", &self.require_origin)
            .finish()
    }
}

/// What is wrong with a [`Config`], one problem per entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_with_a_secret() {
        assert_eq!(Config::new("s3cret").validate(), Ok(()));
    }

    #[test]
    fn collects_every_problem() {
        let mut c = Config::new("bad/secret");
        c.timeout = Duration::ZERO;
        c.max_frame_bytes = 10;
        let err = c.validate().expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(
            Config::new("")
                .validate()
                .expect_err("no secret")
                .to_string()
                .contains("no root could ever connect")
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let mut config = Config::new("topsecretvalue");
        config
            .overlays
            .insert("chat".into(), OverlayConfig::new("overlaysecretvalue"));
        let text = format!("{config:?}");
        assert!(!text.contains("topsecretvalue") && !text.contains("overlaysecretvalue"));
        assert!(text.contains("chat"));
    }

    #[test]
    fn a_named_overlay_or_a_token_key_is_enough_for_a_root() {
        let mut config = Config::new("");
        assert!(config.validate().is_err());
        config
            .overlays
            .insert("chat".into(), OverlayConfig::new("k"));
        assert_eq!(config.validate(), Ok(()));
        let mut tokens = Config::new("");
        tokens.token_key = Some(Arc::new(
            TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key"),
        ));
        tokens.join_auth = JoinAuth::Token;
        tokens.dynamic_overlays = true;
        tokens
            .overlays
            .insert("by-token".into(), OverlayConfig::default());
        assert_eq!(tokens.validate(), Ok(()));
    }

    #[test]
    fn dot_segments_and_overlong_secrets_are_refused_as_never_reachable() {
        let long = "a".repeat(MAX_CREDENTIAL_LEN + 1);
        for secret in [".", "..", long.as_str()] {
            let err = Config::new(secret).validate().expect_err(secret);
            assert_eq!(err.0.len(), 1, "{err}");
            assert!(err.0[0].starts_with("the secret must"), "{err}");
            let mut config = Config::new("");
            config
                .overlays
                .insert("chat".into(), OverlayConfig::new(secret));
            let err = config.validate().expect_err(secret);
            assert_eq!(err.0.len(), 1, "{err}");
            assert!(
                err.0[0].starts_with("the secret of overlay \"chat\" must"),
                "{err}"
            );
        }
        let longest = "a".repeat(MAX_CREDENTIAL_LEN);
        for secret in ["...", ".a", "a..", longest.as_str()] {
            assert_eq!(Config::new(secret).validate(), Ok(()), "{secret}");
        }
    }

    #[test]
    fn max_frame_bytes_has_an_upper_bound() {
        let frame_problem = |bytes: usize| {
            let mut config = Config::new("s");
            config.max_frame_bytes = bytes;
            config.validate().err().is_some_and(|err| {
                err.0
                    .iter()
                    .any(|problem| problem.starts_with("max_frame_bytes must"))
            })
        };
        assert!(frame_problem(MIN_FRAME_BYTES - 1));
        assert!(!frame_problem(MIN_FRAME_BYTES));
        assert!(!frame_problem(MAX_FRAME_BYTES));
        assert!(frame_problem(MAX_FRAME_BYTES + 1));
        assert!(frame_problem(1_000_000_000_000));
    }

    #[test]
    fn short_secrets_are_valid_but_reported_as_weak() {
        let mut config = Config::new("s3cret");
        for (name, secret) in [("a", "0123456789abcdef"), ("b", "tiny"), ("c", "")] {
            config
                .overlays
                .insert(name.into(), OverlayConfig::new(secret));
        }
        config.token_key = Some(Arc::new(
            TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key"),
        ));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.weak_secrets(), [DEFAULT_OVERLAY, "b"]);
        config.secret = "0123456789abcdef".into();
        assert_eq!(config.weak_secrets(), ["b"]);
        config.secret = "a/b".into(); // invalid, not weak
        config.overlays.clear();
        assert!(config.weak_secrets().is_empty());
    }

    #[test]
    fn overlays_are_checked() {
        let mut config = Config::new("s");
        for name in ["default", "a/b", "", "bad secret"] {
            config
                .overlays
                .insert(name.into(), OverlayConfig::new("ok"));
        }
        config
            .overlays
            .insert("nosecret".into(), OverlayConfig::default());
        config.overlays.insert(
            "limits".into(),
            OverlayConfig {
                secret: "bad/secret".into(),
                max_prospects: Some(0),
                timeout: None,
            },
        );
        config.join_auth = JoinAuth::Token;
        config.dynamic_overlays = true;
        config.max_overlays = 2;
        let err = config.validate().expect_err("invalid");
        // default, a/b, "", "bad secret": 4; nosecret; limits: secret and limits; join
        // auth; dynamic overlays; max_overlays.
        assert_eq!(err.0.len(), 10, "{err}");
    }
}
