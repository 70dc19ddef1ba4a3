//! Server configuration: a plain struct with defaults, validated before anything binds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bootstrap_protocol::paths::is_url_safe_secret;

/// Everything the server needs to run. Build it with [`Config::new`] and adjust fields.
#[derive(Clone)]
pub struct Config {
    /// The root's secret: the root connects on `/<secret>/webrtc-bootstrap-root`.
    /// Must be URL-safe ([`is_url_safe_secret`]). Never logged.
    pub secret: String,
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
    /// Largest accepted WebSocket message, in bytes. Larger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Most `/join` sockets open at once; the excess gets HTTP 503.
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
    /// How long one write to a socket may take; a socket that does not read for this long
    /// (its queue stays full) is closed.
    pub write_timeout: Duration,
    /// How long shutdown waits for sockets to close before giving up on them.
    pub shutdown_grace: Duration,
}

impl Config {
    /// A configuration with the given secret and every other field at its default:
    /// the JS server's values where it has one (`timeout` 30 s, heartbeat 15 s).
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
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
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// Checks every field, collecting all problems.
    ///
    /// # Errors
    /// [`ConfigError`] listing what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.secret.is_empty() {
            problems.push(
                "no secret given (set --secret, SECRET or \"secret\" in the config file)"
                    .to_owned(),
            );
        } else if !is_url_safe_secret(&self.secret) {
            problems.push("the secret must be URL-safe: only A-Z a-z 0-9 - . _ ~".to_owned());
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
        ];
        for (name, zero) in positive {
            if zero {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if self.max_frame_bytes < MIN_FRAME_BYTES {
            problems.push(format!(
                "max_frame_bytes must be at least {MIN_FRAME_BYTES}"
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
}

/// Smallest `max_frame_bytes` accepted: an SDP offer alone is 500–3000 bytes.
pub const MIN_FRAME_BYTES: usize = 4096;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("secret", &"<redacted>")
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
            .field("write_timeout", &self.write_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
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
                .contains("no secret")
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", Config::new("topsecretvalue"));
        assert!(!text.contains("topsecretvalue"));
    }
}
