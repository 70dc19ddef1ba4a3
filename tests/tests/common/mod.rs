//! Helpers shared by the end-to-end tests: the real server on `127.0.0.1:0`
//! ([`TestServer`], from the testkit), WebSocket clients, a raw-frame client for
//! malformed input, and waits that always time out.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc_bootstrap_server::Health;

pub use bootstrap_testkit::TestServer;

/// The root's secret of [`TestServer::start`] and [`TestServer::with`].
pub const SECRET: &str = bootstrap_testkit::server::SECRET;

/// Default wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the suites do with a [`TestServer`]: open clients and wait for its state.
pub trait ServerExt {
    /// A client on `/join`.
    async fn join(&self) -> anyhow::Result<Ws>;
    /// A client on the root path.
    async fn root(&self) -> anyhow::Result<Ws>;
    /// Waits until `check` holds for the server's health.
    async fn wait_health(
        &self,
        what: &str,
        check: impl Fn(&Health) -> bool,
    ) -> anyhow::Result<Health>;
}

impl ServerExt for TestServer {
    async fn join(&self) -> anyhow::Result<Ws> {
        connect(&self.url("/join")).await
    }

    async fn root(&self) -> anyhow::Result<Ws> {
        connect(&self.root_url()).await
    }

    async fn wait_health(
        &self,
        what: &str,
        check: impl Fn(&Health) -> bool,
    ) -> anyhow::Result<Health> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let health = self.health();
            if check(&health) {
                return Ok(health);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for {what}; health: {health:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .context("connect timed out")??;
    Ok(ws)
}

/// Next text frame, skipping pings, pongs and heartbeats.
pub async fn recv(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let text = recv_any(ws).await?;
        if text != "\"heartbeat\"" {
            return Ok(text);
        }
    }
}

/// Next text frame (heartbeats included), skipping pings and pongs.
pub async fn recv_any(ws: &mut Ws) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no message in time")?;
        match next {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("expected a text frame, got {other:?}"),
        }
    }
}

/// Next text frame that satisfies `wanted`, skipping others.
pub async fn recv_matching(ws: &mut Ws, wanted: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    loop {
        let text = recv(ws).await?;
        if wanted(&text) {
            return Ok(text);
        }
    }
}

/// Asserts nothing but pings and heartbeats arrives for `quiet`.
pub async fn expect_silence(ws: &mut Ws, quiet: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "\"heartbeat\"" => {}
            Ok(other) => bail!("expected silence, got {other:?}"),
        }
    }
}

/// Waits for the server's close frame, skipping other frames. `Ok(None)` is a close
/// without a status code.
pub async fn recv_close(ws: &mut Ws) -> anyhow::Result<Option<CloseFrame>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no close in time")?
        {
            Some(Ok(Message::Close(frame))) => return Ok(frame),
            Some(Ok(_)) => {}
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// A JS-client-shaped envelope.
pub fn envelope(destination: Option<&str>, signal: &str, rank: u32) -> String {
    let destination = destination.map_or("null".to_owned(), |d| format!("\"{d}\""));
    format!(r#"{{"origin":null,"destination":{destination},"signal":{signal},"rank":{rank}}}"#)
}

pub fn field(text: &str, key: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))?;
    Ok(value.get(key).cloned().unwrap_or(serde_json::Value::Null))
}

pub fn origin(text: &str) -> anyhow::Result<String> {
    field(text, "origin")?
        .as_str()
        .map(str::to_owned)
        .context("origin is not a string")
}

/// A whole well-behaved handshake through the server: newcomer offer and two candidates
/// to the root, an answerer's answer and candidate to the newcomer, and one direct
/// candidate back. Checks every message's content and origin.
pub async fn handshake(server: &TestServer, root: &mut Ws) -> anyhow::Result<()> {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut newcomer = server.join().await?;
    let offer = envelope(
        None,
        &format!(r#"{{"type":"offer","sdp":"v=0\r\no=- {nonce} 2 IN IP4 127.0.0.1\r\n"}}"#),
        0,
    );
    send(&mut newcomer, &offer).await?;
    for rank in 1..=2 {
        send(&mut newcomer, &envelope(None, &candidate(rank), rank)).await?;
    }
    // The root may also hear from other peers: pick this newcomer's messages out.
    let marker = format!("o=- {nonce} 2");
    let got = recv_matching(root, |m| m.contains(&marker)).await?;
    let newcomer_id = origin(&got)?;
    let expected = offer.replacen(
        "\"origin\":null",
        &format!("\"origin\":\"{newcomer_id}\""),
        1,
    );
    anyhow::ensure!(got == expected, "offer changed in transit: {got}");
    for rank in 1..=2 {
        let got = recv_matching(root, |m| origin(m).is_ok_and(|o| o == newcomer_id)).await?;
        anyhow::ensure!(
            field(&got, "rank")? == rank,
            "candidates out of order: {got}"
        );
    }
    let mut answerer = server.join().await?;
    send(
        &mut answerer,
        &envelope(
            Some(&newcomer_id),
            r#"{"type":"answer","sdp":"v=0\r\n"}"#,
            0,
        ),
    )
    .await?;
    send(
        &mut answerer,
        &envelope(Some(&newcomer_id), &candidate(1), 1),
    )
    .await?;
    let answer = recv(&mut newcomer).await?;
    let answerer_id = origin(&answer)?;
    anyhow::ensure!(answerer_id != newcomer_id, "answerer got the newcomer's id");
    anyhow::ensure!(
        field(&answer, "signal")?["type"] == "answer",
        "not the answer: {answer}"
    );
    anyhow::ensure!(
        field(&answer, "destination")? == newcomer_id.as_str(),
        "destination changed: {answer}"
    );
    let cand = recv(&mut newcomer).await?;
    anyhow::ensure!(
        field(&cand, "rank")? == 1 && origin(&cand)? == answerer_id,
        "bad candidate: {cand}"
    );
    send(
        &mut newcomer,
        &envelope(Some(&answerer_id), &candidate(3), 3),
    )
    .await?;
    let direct = recv(&mut answerer).await?;
    anyhow::ensure!(
        origin(&direct)? == newcomer_id && field(&direct, "rank")? == 3,
        "bad direct candidate: {direct}"
    );
    newcomer.close(None).await?;
    answerer.close(None).await?;
    Ok(())
}

pub fn candidate(n: u32) -> String {
    format!(
        r#"{{"candidate":{{"candidate":"candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host","sdpMLineIndex":0,"sdpMid":"0"}}}}"#,
        50000 + n
    )
}

/// A WebSocket upgrade request for `path`, as a client writes it.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A WebSocket client that writes hand-made frames, for input no normal client sends.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(upgrade_request(addr, path).as_bytes())
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .context("no upgrade response")??;
            anyhow::ensure!(n == 1, "connection closed during upgrade");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        Ok(Self { stream })
    }

    /// Writes one masked frame with the given first byte (FIN, RSV bits, opcode).
    pub async fn frame(&mut self, first: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![first];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | u8::try_from(len)?);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len)?.to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&u64::try_from(len)?.to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Reads frames until a close frame and returns its status code (`None` if the
    /// close had no code, or the connection ended without one).
    pub async fn close_code(&mut self) -> anyhow::Result<Option<u16>> {
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Parse complete server frames (unmasked) from the buffer.
            while buf.len() >= 2 {
                let opcode = buf[0] & 0x0f;
                let (len, start) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                    127 => bail!("unexpected huge frame"),
                    126 => break,
                    n => (usize::from(n), 2),
                };
                if buf.len() < start + len {
                    break;
                }
                if opcode == 0x8 {
                    return Ok((len >= 2).then(|| u16::from_be_bytes([buf[start], buf[start + 1]])));
                }
                buf.drain(..start + len);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .context("no close in time")??;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub const TEXT: u8 = 0x81;
pub const BINARY: u8 = 0x82;

/// A raw HTTP/1.1 answer, read to the end.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body, as sent.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The whole answer as text: head, blank line, body.
    pub fn raw(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.text())
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {self:?}"))
    }
}

/// Sends `method path` with `headers` (whole lines, each ending in `\r\n`) and
/// `Connection: close`, and reads the whole answer within [`WAIT`].
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> anyhow::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .with_context(|| format!("no answer to {method} {path}"))??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no end of head: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("status")?;
    Ok(Reply {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    })
}

/// `GET path`, read to the end.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    http(addr, "GET", path, "").await
}
