//! Strict handshakes and framing: what RFC 6455 and RFC 9110 say must be refused is
//! refused, over raw TCP, on both upgrade routes, and a proper request still upgrades.

mod common;

use std::net::SocketAddr;

use anyhow::Context as _;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header lines of a request, in order.
type Headers = Vec<(&'static str, String)>;

/// The headers of a good upgrade request to `addr`.
fn good(addr: SocketAddr) -> Headers {
    vec![
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".into()),
        ("Connection", "Upgrade".into()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
        ("Sec-WebSocket-Version", "13".into()),
    ]
}

/// The good headers with `name` set to each of `values` (none: left out; two: repeated).
fn with(addr: SocketAddr, name: &'static str, values: &[&str]) -> Headers {
    let mut headers = good(addr);
    headers.retain(|(n, _)| *n != name);
    headers.extend(values.iter().map(|value| (name, (*value).to_owned())));
    headers
}

/// A request to send, and the status it should get.
struct Case {
    what: &'static str,
    version: &'static str,
    headers: Headers,
    status: &'static str,
}

impl Case {
    fn new(what: &'static str, headers: Headers, status: &'static str) -> Self {
        Self {
            what,
            version: "HTTP/1.1",
            headers,
            status,
        }
    }
}

/// Sends `GET path` with `case`'s version and headers; returns the response's head.
async fn exchange(addr: SocketAddr, path: &str, case: &Case) -> anyhow::Result<String> {
    let mut request = format!("GET {path} {}\r\n", case.version);
    for (name, value) in &case.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .context("no response in time")??;
        anyhow::ensure!(n == 1, "connection closed before a response: {head:?}");
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn bad_handshakes_get_4xx_and_a_good_one_still_gets_101() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let addr = server.addr;
    let key = "Sec-WebSocket-Key";
    let version = "Sec-WebSocket-Version";
    let cases = [
        Case::new(
            "key not base64",
            with(addr, key, &["!!!!!!!!!!!!!!!!!!!!!!=="]),
            "400",
        ),
        Case::new(
            "key of 17 bytes",
            with(addr, key, &["AAAAAAAAAAAAAAAAAAAAAAA="]),
            "400",
        ),
        Case::new(
            "key with bits set past its 16 bytes",
            with(addr, key, &["dGhlIHNhbXBsZSBub25jZR=="]),
            "400",
        ),
        Case::new(
            "two keys",
            with(
                addr,
                key,
                &["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="],
            ),
            "400",
        ),
        Case::new("two versions", with(addr, version, &["13", "13"]), "400"),
        Case::new("no Host", with(addr, "Host", &[]), "400"),
        Case::new(
            "two Hosts",
            with(addr, "Host", &["example.com", "example.com"]),
            "400",
        ),
        Case::new("an invalid Host", with(addr, "Host", &["a b"]), "400"),
        // Unchanged: another version gets 426 and the version this server speaks.
        Case::new("another version", with(addr, version, &["8"]), "426"),
        // RFC 6455 section 4.1: "at least 1.1"; hyper gives HTTP/1.0 no upgrade handle.
        Case {
            version: "HTTP/1.0",
            ..Case::new("HTTP/1.0", good(addr), "426")
        },
        Case::new("a good request", good(addr), "101"),
    ];
    let root = format!("/{SECRET}/webrtc-bootstrap-root");
    let mut wrong = Vec::new();
    for path in ["/join", root.as_str()] {
        for case in &cases {
            let head = exchange(addr, path, case).await?;
            let what = case.what;
            if head.split(' ').nth(1) != Some(case.status) {
                wrong.push(format!(
                    "{what} on {path}: expected {}, got {head:?}",
                    case.status
                ));
            }
            let lower = head.to_ascii_lowercase();
            if what == "another version" && !lower.contains("sec-websocket-version: 13\r\n") {
                wrong.push(format!(
                    "{what} on {path}: no Sec-WebSocket-Version: {head:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut raw = RawClient::connect(server.addr, "/join").await?;
    // FIN + text, masked, 64-bit length 2^63 + 5, masking key: the header alone.
    let mut frame = vec![TEXT, 0x80 | 127];
    frame.extend_from_slice(&((1u64 << 63) + 5).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    raw.stream.write_all(&frame).await?;
    assert_eq!(raw.close_code().await?, Some(1002));
    Ok(())
}
