//! WebSocket close codes the server sends, and why.
//!
//! Codes below 4000 are the RFC 6455 ones. `4000`–`4999` are private-use codes of this
//! server: JS clients ignore close codes entirely, the Rust peer library maps them to
//! typed errors.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The server is shutting down (SIGINT/SIGTERM), or a config reload removed the
/// socket's overlay.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The peer kept sending payloads that are not valid UTF-8 or not a JSON object.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The peer kept breaking a policy: flooding, or not reading its socket.
pub const POLICY: u16 = 1008;
/// The peer sent a frame larger than the configured limit.
pub const TOO_BIG: u16 = 1009;
/// The server is out of memory for this socket's unfinished message: try later.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// A newer root connected and replaced this one.
pub const ROOT_REPLACED: u16 = 4000;
/// The root did not answer WebSocket pings in time and is considered dead.
pub const ROOT_UNRESPONSIVE: u16 = 4001;

/// Close reason sent to a root replaced by a newer one.
pub const REASON_ROOT_REPLACED: &str = "replaced by a newer root";
/// Close reason sent on shutdown.
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Close reason sent to the sockets of an overlay that a config reload removed.
pub const REASON_OVERLAY_REMOVED: &str = "overlay removed";
