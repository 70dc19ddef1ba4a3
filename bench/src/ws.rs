//! A minimal WebSocket client: just enough of RFC 6455 for the load generator.
//!
//! It opens a connection (optionally from a chosen source address, to spread many
//! sockets over several loopback addresses), sends masked text frames and reads the
//! server's unfragmented frames into `BytesMut` slices. Reads go through `recvmsg`, to
//! get the kernel's receive timestamp with the bytes (see [`Arrival`]). A general
//! client (tokio-tungstenite) costs several times more CPU per message; on 2 cores the
//! generator competes with the server, so it has to be cheap.
//!
//! With a TLS configuration the same client speaks `wss://` (rustls with the ring
//! provider, through tokio-rustls): the bytes then come out of rustls, so there is no
//! kernel receive timestamp and "delivered" is the read time.
//!
//! Not supported, and reported as errors: fragmented messages, masked server frames,
//! extensions. Neither server under test sends those. The `Sec-WebSocket-Accept` answer
//! is not checked here (the check would only add generator CPU): the end-to-end tests
//! check our server's handshake with tokio-tungstenite, and the interop tests with the
//! JS clients and Chromium.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bootstrap_ws::{self as ws, OpCode, encode_frame};
use bytes::{Buf, BytesMut};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// Largest frame accepted from a server.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 16 * 1024;
/// Read buffer reserved before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Why a WebSocket operation failed.
#[derive(Debug)]
pub(crate) enum WsError {
    /// The TCP connection failed.
    Io(io::Error),
    /// The server refused the upgrade; the HTTP status line.
    Refused(String),
    /// The server closed the connection.
    Closed,
    /// The server sent something this client does not support.
    Protocol(&'static str),
    /// The server did not answer in time.
    TimedOut,
}

impl std::error::Error for WsError {}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Refused(status) => write!(f, "upgrade refused: {status}"),
            Self::Closed => f.write_str("connection closed by the server"),
            Self::Protocol(what) => write!(f, "unsupported WebSocket frame: {what}"),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A frame received from the server.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A text message.
    Text(BytesMut),
    /// A binary message.
    Binary(BytesMut),
    /// A ping, to be answered with a pong.
    Ping(BytesMut),
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// When the bytes of the last read arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// When the kernel received them (its receive timestamp), or `read` where the
    /// kernel gives none. What the server's relay latency ends at.
    pub(crate) delivered: Instant,
    /// When the generator read them: later than `delivered` by however long they waited
    /// for the generator, which on a busy machine is the generator's own queueing.
    pub(crate) read: Instant,
}

/// TLS handshakes this process completed as a client: full, resumed (for the TLS
/// benchmark, which runs one load at a time).
pub(crate) static TLS_HANDSHAKES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The connection under the WebSocket: plain TCP, or TLS over it.
#[derive(Debug)]
enum Stream {
    /// `ws://`: reads through `recvmsg`, with kernel receive timestamps.
    Plain(TcpStream),
    /// `wss://`: reads and writes through rustls.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(bytes).await,
            Self::Tls(s) => {
                s.write_all(bytes).await?;
                // rustls buffers the records until flushed.
                s.flush().await
            }
        }
    }
}

/// One client WebSocket connection.
#[derive(Debug)]
pub(crate) struct WsClient {
    stream: Stream,
    read: BytesMut,
    arrival: Arrival,
    write: Vec<u8>,
    /// State of the xorshift generator for masking keys.
    mask_state: u32,
}

impl WsClient {
    /// Connects to `server`, optionally from `local`, and upgrades `path`.
    pub(crate) async fn connect(
        server: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
        seed: u32,
    ) -> Result<Self, WsError> {
        Self::connect_with(server, path, local, seed, None).await
    }

    /// [`Self::connect`], over TLS when `tls` is given (the server's certificate must
    /// be valid for `localhost`).
    pub(crate) async fn connect_with(
        server: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
        seed: u32,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Self, WsError> {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(server).await?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => {
                // Kernel receive timestamps, to tell the relay's latency from the
                // generator's.
                setsockopt(&tcp, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
                Stream::Plain(tcp)
            }
            Some(config) => {
                let name = ServerName::try_from("localhost")
                    .map_err(|_| WsError::Protocol("server name"))?;
                let tls = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await?;
                let resumed = tls.get_ref().1.handshake_kind()
                    == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
                TLS_HANDSHAKES[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
                Stream::Tls(Box::new(tls))
            }
        };
        let mut client = Self {
            stream,
            read: BytesMut::new(),
            arrival: Arrival {
                delivered: Instant::now(),
                read: Instant::now(),
            },
            write: Vec::new(),
            mask_state: seed | 1,
        };
        client.upgrade(server, path).await?;
        Ok(client)
    }

    async fn upgrade(&mut self, server: SocketAddr, path: &str) -> Result<(), WsError> {
        let key = websocket_key(self.next_mask());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some(end) = find(&self.read, b"\r\n\r\n") {
                let head = self.read.split_to(end + 4);
                if head.starts_with(b"HTTP/1.1 101") {
                    // Keep the read buffer small for idle sockets; frames reserve more.
                    if self.read.is_empty() {
                        self.read = BytesMut::new();
                    }
                    return Ok(());
                }
                let line = head[..].split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(WsError::Refused(String::from_utf8_lossy(line).into_owned()));
            }
            if self.read.len() > MAX_HEAD {
                return Err(WsError::Protocol("oversized HTTP response head"));
            }
            self.read.reserve(1024);
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.read).await?,
                Stream::Tls(s) => s.read_buf(&mut self.read).await?,
            };
            if n == 0 {
                return Err(WsError::Closed);
            }
        }
    }

    /// Sends one text message.
    pub(crate) async fn send_text(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.queue(OpCode::Text, payload);
        self.flush().await
    }

    /// Appends a frame to the write buffer without sending it.
    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.next_mask().to_ne_bytes();
        encode_frame(&mut self.write, opcode, payload, Some(mask));
    }

    /// Writes everything queued.
    async fn flush(&mut self) -> Result<(), WsError> {
        let result = self.stream.write_all(&self.write).await;
        self.write.clear();
        result.map_err(WsError::from)
    }

    /// Reads more bytes from the socket and notes when they arrived ([`Self::arrival`]).
    /// Cancel-safe: nothing is lost if the future is dropped before it completes.
    pub(crate) async fn fill(&mut self) -> Result<(), WsError> {
        let stream = match &mut self.stream {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => {
                // Cancel-safe too: `read_buf` appends only what it read.
                self.read.reserve(READ_CHUNK);
                if stream.read_buf(&mut self.read).await? == 0 {
                    return Err(WsError::Closed);
                }
                let now = Instant::now();
                self.arrival = Arrival {
                    delivered: now,
                    read: now,
                };
                return Ok(());
            }
        };
        loop {
            stream.readable().await?;
            let fd = stream.as_raw_fd();
            let read = &mut self.read;
            match stream.try_io(Interest::READABLE, || receive(fd, read)) {
                Ok((0, _)) => return Err(WsError::Closed),
                Ok((_, stamp)) => {
                    let now = Instant::now();
                    // The kernel's clock is the wall clock: its age, taken now, places it on
                    // the monotonic clock the send times use.
                    let age = stamp.and_then(|stamp| SystemTime::now().duration_since(stamp).ok());
                    self.arrival = Arrival {
                        delivered: age.and_then(|age| now.checked_sub(age)).unwrap_or(now),
                        read: now,
                    };
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// When the bytes of the last [`Self::fill`] arrived.
    pub(crate) fn arrival(&self) -> Arrival {
        self.arrival
    }

    /// The next complete frame in the read buffer, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, WsError> {
        let Some((header, len)) = parse_header(&self.read)? else {
            return Ok(None);
        };
        if self.read.len() < header.len + len {
            return Ok(None);
        }
        self.read.advance(header.len);
        let payload = self.read.split_to(len);
        Ok(Some(match header.opcode {
            OpCode::Text => Frame::Text(payload),
            OpCode::Binary => Frame::Binary(payload),
            OpCode::Close => Frame::Close,
            OpCode::Ping => Frame::Ping(payload),
            OpCode::Pong | OpCode::Continuation => Frame::Pong,
        }))
    }

    /// Answers a ping.
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.queue(OpCode::Pong, payload);
        self.flush().await
    }

    /// Sends a close frame (1000) and waits up to `wait` for the server's close frame
    /// or the end of the connection. Returns the text messages that arrived meanwhile:
    /// for a finished handshake there must be none.
    pub(crate) async fn close(mut self, wait: Duration) -> Result<Vec<BytesMut>, WsError> {
        self.queue(OpCode::Close, &1000u16.to_be_bytes());
        self.flush().await?;
        let mut stray = Vec::new();
        let drain = async {
            loop {
                while let Some(frame) = self.next_frame()? {
                    match frame {
                        Frame::Text(text) | Frame::Binary(text) => stray.push(text),
                        Frame::Close => return Ok(()),
                        Frame::Ping(_) | Frame::Pong => {}
                    }
                }
                match self.fill().await {
                    Ok(()) => {}
                    Err(WsError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(wait, drain).await {
            Ok(Ok(())) | Err(_) => Ok(stray),
            Ok(Err(e)) => Err(e),
        }
    }

    /// The next masking key (xorshift32: cheap, and varied enough for a masking key).
    fn next_mask(&mut self) -> u32 {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x
    }
}

/// The header and payload length of the server frame at the start of `buf`, once the
/// whole header is there.
fn parse_header(buf: &[u8]) -> Result<Option<(ws::Header, usize)>, WsError> {
    let header = match ws::parse_header(buf) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(_) => return Err(WsError::Protocol("invalid frame header")),
    };
    if !header.fin || header.opcode == OpCode::Continuation {
        return Err(WsError::Protocol("fragmented message"));
    }
    if header.mask.is_some() {
        return Err(WsError::Protocol("masked frame from the server"));
    }
    match usize::try_from(header.payload_len) {
        Ok(len) if len <= MAX_FRAME => Ok(Some((header, len))),
        _ => Err(WsError::Protocol("oversized frame")),
    }
}

thread_local! {
    /// Where `recvmsg` reads into before the bytes are appended to a client's buffer
    /// (`recvmsg` needs initialized memory; a client's spare capacity is not).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// One `recvmsg` on `fd`, appended to `read`: the byte count and the kernel's receive
/// timestamp of the last segment read, if it gave one.
fn receive(fd: RawFd, read: &mut BytesMut) -> io::Result<(usize, Option<SystemTime>)> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut cmsg = nix::cmsg_space!(TimeSpec);
        let mut iov = [io::IoSliceMut::new(&mut scratch[..])];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
        let n = msg.bytes;
        let stamp = msg
            .cmsgs()
            .ok()
            .into_iter()
            .flatten()
            .find_map(|cmsg| match cmsg {
                ControlMessageOwned::ScmTimestampns(ts) => {
                    let nanos = u64::try_from(ts.tv_sec())
                        .ok()?
                        .checked_mul(1_000_000_000)?;
                    let nanos = nanos.checked_add(u64::try_from(ts.tv_nsec()).ok()?)?;
                    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
                }
                _ => None,
            });
        read.extend_from_slice(&scratch[..n]);
        Ok((n, stamp))
    })
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64 (22 characters and `==`).
fn websocket_key(seed: u32) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = u64::from(seed) | 1;
    let mut key = String::with_capacity(24);
    for i in 0..22 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // The 22nd character carries only 2 bits of the 16 bytes: its low 4 bits are 0.
        let index = if i == 21 {
            (x & 0x30) as usize
        } else {
            (x & 0x3f) as usize
        };
        key.push(char::from(B64[index]));
    }
    key.push_str("==");
    key
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_headers() {
        let ok = |buf: &[u8]| {
            parse_header(buf)
                .ok()
                .map(|h| h.map(|(h, len)| (h.len, len)))
        };
        assert_eq!(ok(&[0x81]), Some(None));
        assert_eq!(ok(&[0x81, 5]), Some(Some((2, 5))));
        assert_eq!(ok(&[0x81, 126, 1]), Some(None));
        assert_eq!(ok(&[0x81, 126, 1, 0]), Some(Some((4, 256))));
        assert!(parse_header(&[0x01, 5]).is_err(), "fragment");
        assert!(parse_header(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "masked");
    }

    #[test]
    fn keys_are_base64_of_16_bytes() {
        for seed in [1, 7, 0xdead_beef] {
            let key = websocket_key(seed);
            assert_eq!(key.len(), 24);
            assert!(key.ends_with("=="));
            let last = key.as_bytes()[21];
            assert!(matches!(last, b'A' | b'Q' | b'g' | b'w'), "{key}");
        }
    }
}
