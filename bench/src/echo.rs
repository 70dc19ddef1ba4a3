//! `bootstrap-bench echo`: a WebSocket echo endpoint built from the server's codec, for
//! the Autobahn conformance cases (driven by kosoku; see `docs/conformance.md`). It is
//! a test fixture, never a route of the production server.
//!
//! Everything WebSocket comes from `bootstrap-ws`, as in the server: the key check and
//! the accept key, the [`Decoder`] (masking, reassembly, UTF-8 of text and close
//! reasons, the size cap, and every protocol error with its close code) and the
//! encoders. The socket follows the server's rules (`crates/server/src/handler.rs` and
//! `transport.rs`): text and binary messages are echoed whole (where the server relays
//! them), pings are answered with pongs carrying their payload, pongs and fragments
//! are answered with nothing, a peer's close is answered with its own status code, a
//! bad frame is answered with [`FrameError::close_code`] (1002, 1007 or 1009), and the
//! connection is dropped right after our close frame is written.
//!
//! The transport is re-implemented, minimal: the server's is crate-private and bound to
//! its registry, queues, rate limit and timers, none of which is WebSocket. Here it is
//! a sequential loop (read up to 8 KiB, decode, write what the frames produced), which
//! is the order the server's transport keeps too: it reads only once everything it
//! has to write is written. The one difference: the server discards replies not yet
//! written when a socket ends (a close goes right after the frame in flight), while
//! this endpoint writes the echoes and pongs of the read that ended it before its
//! close frame, because echoes stand for relayed messages, which the server delivers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use bootstrap_ws::{
    Decoder, FrameError, Inbound, OpCode, accept_key, encode_close, encode_frame, is_valid_key,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Bytes read at once: the server's read chunk.
const READ_CHUNK: usize = 8 * 1024;

/// Largest opening handshake request accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a client may take to send its opening handshake request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Server` header of the `101` answer, which kosoku reports as the agent's name.
pub const AGENT: &str = "bootstrap-ws-echo";

/// How the echo endpoint runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoConfig {
    /// Largest message in bytes (whole, after reassembly), like the server's
    /// `max_frame_bytes`; larger ones are closed with 1009.
    pub max_frame_bytes: usize,
}

impl Default for EchoConfig {
    /// The server's default cap (64 KiB).
    fn default() -> Self {
        Self {
            max_frame_bytes: webrtc_bootstrap_server::Config::new("").max_frame_bytes,
        }
    }
}

/// Serves WebSocket echo connections on `listener` until `shutdown` completes, then
/// drops the connections still open (a test fixture needs no graceful drain).
///
/// # Errors
/// When accepting fails.
pub async fn serve(
    listener: TcpListener,
    config: EchoConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                connections.spawn(connection(stream, config));
            }
            // Reaps finished connections, so the set does not grow with every case.
            Some(_) = connections.join_next() => {}
        }
    }
}

/// One connection: the opening handshake, then echo until either side closes. IO
/// errors end it quietly: the conformance cases cut connections on purpose.
async fn connection(mut stream: TcpStream, config: EchoConfig) {
    let _ = stream.set_nodelay(true);
    let Ok(Ok(Some((head_len, mut bytes)))) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut stream)).await
    else {
        return;
    };
    let answer = match handshake(&bytes[..head_len]) {
        Ok(accept) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: {accept}\r\nServer: {AGENT}\r\n\r\n"
        ),
        Err(refused) => {
            let _ = stream.write_all(refused.response().as_bytes()).await;
            return;
        }
    };
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    // Frames the client sent right after its request.
    let mut early = bytes.split_off(head_len);
    let mut decoder = Decoder::new(config.max_frame_bytes);
    let mut out = Vec::new();
    let mut ended = on_bytes(&mut decoder, &mut early, &mut out).is_break();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            // Given back, as the server does, so an idle socket holds no write buffer.
            out = Vec::new();
        }
        if ended {
            // Dropped right after the close frame, as the server does (RFC 6455
            // section 7.1.1: the server closes the TCP connection first).
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => ended = on_bytes(&mut decoder, &mut chunk[..n], &mut out).is_break(),
        }
    }
}

/// Reads until the end of the request head; returns its length and every byte read
/// (frames may follow it), or `None` if the client left or sent too much.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<(usize, Vec<u8>)>> {
    let mut bytes = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        // The terminator may straddle two reads.
        let from = bytes.len().saturating_sub(3);
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(at) = bytes[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((from + at + 4, bytes)));
        }
        if bytes.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

/// Decodes bytes just read and appends the answers (echoes, pongs, and the close frame
/// when the socket ends) to `out`; `Break` once the socket must be dropped.
fn on_bytes(decoder: &mut Decoder, bytes: &mut [u8], out: &mut Vec<u8>) -> ControlFlow<()> {
    let mut peer_closed = None;
    let decoded = decoder.decode(bytes, |inbound| {
        match inbound {
            Inbound::Text(text) => encode_frame(out, OpCode::Text, text.as_bytes(), None),
            Inbound::Binary(bytes) => encode_frame(out, OpCode::Binary, bytes, None),
            Inbound::Ping(payload) => encode_frame(out, OpCode::Pong, payload, None),
            Inbound::Pong | Inbound::Fragment => {}
            Inbound::Close(code) => peer_closed = Some(code),
        }
        ControlFlow::Continue(())
    });
    match decoded {
        Err(error) => {
            encode_close(out, Some(error.close_code()), reason(error));
            ControlFlow::Break(())
        }
        // Echo the peer's status code (or none), as the server does (RFC 6455 section
        // 5.5.1).
        Ok(ControlFlow::Break(())) => {
            encode_close(out, peer_closed.flatten(), "");
            ControlFlow::Break(())
        }
        Ok(ControlFlow::Continue(())) => ControlFlow::Continue(()),
    }
}

/// The close reason the server gives for a bad frame (`handler.rs`).
fn reason(error: FrameError) -> &'static str {
    match error {
        FrameError::TooBig { .. } => "message too big",
        FrameError::InvalidUtf8 => "text frame is not UTF-8",
        _ => "WebSocket protocol error",
    }
}

/// Why an opening handshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Not an HTTP/1.1 `GET` request line, or a malformed header line.
    BadRequest,
    /// Not a WebSocket upgrade, or no single `Host`, or no single valid key.
    NotUpgrade,
    /// No single `Sec-WebSocket-Version: 13`.
    Version,
}

impl Refused {
    /// The HTTP answer.
    fn response(self) -> &'static str {
        match self {
            Self::BadRequest => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            Self::NotUpgrade => {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\nnot a WebSocket upgrade\n"
            }
            Self::Version => {
                "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
            }
        }
    }
}

/// Checks an opening handshake request head (RFC 6455 section 4.2.1) with the codec's
/// key check; returns its `Sec-WebSocket-Accept`. Extensions and subprotocols offered
/// are not taken up (the server offers none to an echo client), so reserved bits stay
/// protocol errors. The `Host` grammar, which the server checks, is HTTP, not the
/// codec, and is not checked here.
fn handshake(head: &[u8]) -> Result<String, Refused> {
    let head = std::str::from_utf8(head).map_err(|_| Refused::BadRequest)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    if parts.next() != Some("GET") || parts.nth(1) != Some("HTTP/1.1") {
        return Err(Refused::BadRequest);
    }
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(Refused::BadRequest)?;
        headers.push((name.to_ascii_lowercase(), value.trim()));
    }
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    let only = |name: &'static str| {
        let mut values = all(name);
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value),
            _ => None,
        }
    };
    let has_token = |name: &'static str, token: &str| {
        all(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if only("host").is_none_or(str::is_empty)
        || !has_token("connection", "upgrade")
        || !has_token("upgrade", "websocket")
    {
        return Err(Refused::NotUpgrade);
    }
    if only("sec-websocket-version") != Some("13") {
        return Err(Refused::Version);
    }
    let key = only("sec-websocket-key")
        .filter(|key| is_valid_key(key.as_bytes()))
        .ok_or(Refused::NotUpgrade)?;
    Ok(accept_key(key.as_bytes()))
}

/// Binds `addr` and serves until `shutdown`, printing `listening on ws://ADDR` first
/// (with the port chosen when `addr` asks for port 0).
///
/// # Errors
/// When binding or accepting fails.
pub async fn run(
    addr: SocketAddr,
    config: EchoConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    serve(listener, config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootstrap_ws::parse_header;

    fn client(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, Some([7, 1, 2, 9]));
        if !fin {
            out[0] &= 0x7f;
        }
        out
    }

    /// The frames the endpoint writes for `input`, and whether it ends the socket.
    fn answers(max: usize, input: &[u8]) -> (Vec<(OpCode, Vec<u8>)>, bool) {
        let mut out = Vec::new();
        let ended = on_bytes(&mut Decoder::new(max), &mut input.to_vec(), &mut out);
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(header) = parse_header(&out[at..]).expect("valid server frames") {
            let start = at + header.len;
            at = start + usize::try_from(header.payload_len).expect("small");
            frames.push((header.opcode, out[start..at].to_vec()));
        }
        assert_eq!(at, out.len());
        (frames, ended.is_break())
    }

    #[test]
    fn messages_are_echoed_whole_and_pings_answered() {
        let mut input = client(OpCode::Text, false, "h\u{e9}".as_bytes()[..2].as_ref());
        input.extend(client(OpCode::Ping, true, b"p"));
        input.extend(client(
            OpCode::Continuation,
            true,
            &"h\u{e9}".as_bytes()[2..],
        ));
        input.extend(client(OpCode::Binary, true, &[0xff, 0]));
        input.extend(client(OpCode::Pong, true, b"ignored"));
        let (frames, ended) = answers(1024, &input);
        assert_eq!(
            frames,
            [
                (OpCode::Pong, b"p".to_vec()),
                (OpCode::Text, "h\u{e9}".as_bytes().to_vec()),
                (OpCode::Binary, vec![0xff, 0]),
            ]
        );
        assert!(!ended);
    }

    #[test]
    fn the_peers_close_code_is_echoed_and_nothing_after_it_is_read() {
        let mut input = client(OpCode::Close, true, &[0x0b, 0xb8, b'x']); // 3000
        input.extend(client(OpCode::Ping, true, b""));
        let (frames, ended) = answers(1024, &input);
        assert_eq!(frames, [(OpCode::Close, vec![0x0b, 0xb8])]);
        assert!(ended);
        let (frames, _) = answers(1024, &client(OpCode::Close, true, b""));
        assert_eq!(frames, [(OpCode::Close, vec![])]);
    }

    #[test]
    fn bad_frames_close_with_the_codecs_code() {
        for (input, code) in [
            (client(OpCode::Text, true, &[0xc0]), 1007),
            (client(OpCode::Binary, true, &[0; 11]), 1009),
            (client(OpCode::Continuation, true, b"x"), 1002),
        ] {
            let (frames, ended) = answers(10, &input);
            assert_eq!(frames[0].0, OpCode::Close);
            assert_eq!(frames[0].1[..2], u16::to_be_bytes(code));
            assert!(ended);
        }
    }

    #[test]
    fn only_a_valid_upgrade_is_accepted() {
        let good = "GET / HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nConnection: keep-alive, Upgrade\r\n\
                    Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            handshake(good.as_bytes()),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned())
        );
        let bad = [
            (good.replace("GET", "POST"), Refused::BadRequest),
            (
                good.replace("Upgrade: WebSocket", "Upgrade: h2c"),
                Refused::NotUpgrade,
            ),
            (good.replace("13", "8"), Refused::Version),
            (good.replace("Q==", "Q="), Refused::NotUpgrade),
            (
                good.replace("Host: 127.0.0.1:9001\r\n", ""),
                Refused::NotUpgrade,
            ),
        ];
        for (request, refused) in bad {
            assert_eq!(handshake(request.as_bytes()), Err(refused), "{request}");
        }
    }
}
