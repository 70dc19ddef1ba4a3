//! Limits on what a client can make the server hold or wait for: request heads,
//! connections during shutdown.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `request` and returns the status line of the answer.
async fn status_line(server: &TestServer, request: &[u8]) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await?;
    tcp.write_all(request).await?;
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await??;
        answer.extend_from_slice(&chunk[..n]);
        if n == 0 || answer.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_request_head_over_16_kib_gets_431() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut big = upgrade_request(server.addr, "/join").into_bytes();
    let padding = format!("x-padding: {}\r\n\r\n", "p".repeat(20 * 1024));
    big.truncate(big.len() - 2); // reopen the head
    big.extend_from_slice(padding.as_bytes());
    let line = status_line(&server, &big).await?;
    assert!(line.contains(" 431 "), "{line}");
    assert_eq!(server.health().prospects, 0);
    // A head within the limit is still upgraded.
    let mut fine = upgrade_request(server.addr, "/join").into_bytes();
    fine.truncate(fine.len() - 2);
    fine.extend_from_slice(format!("x-padding: {}\r\n\r\n", "p".repeat(8 * 1024)).as_bytes());
    let line = status_line(&server, &fine).await?;
    assert!(line.contains(" 101 "), "{line}");
    Ok(())
}

#[tokio::test]
async fn the_server_stops_listening_as_soon_as_it_shuts_down() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.shutdown_grace = Duration::from_secs(5)).await?;
    // A client halfway through its request head keeps the server in its grace period.
    let mut stuck = tokio::net::TcpStream::connect(server.addr).await?;
    stuck.write_all(b"GET /join HTTP/1.1\r\n").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.state.shutdown_token().cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(server.addr),
    )
    .await;
    assert!(
        matches!(refused, Ok(Err(ref e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    drop(stuck);
    Ok(())
}

#[tokio::test]
async fn what_slow_readers_make_the_server_hold_is_bounded_in_bytes() -> anyhow::Result<()> {
    const BUDGET: usize = 512 * 1024;
    let server = TestServer::with(|c| {
        c.max_queued_bytes = BUDGET;
        c.rate_burst = 1000;
        c.rate_per_second = 1000;
    })
    .await?;
    // A root that stops reading, and newcomers that send it 60 KB messages.
    let root =
        RawClient::connect(server.addr, &server.root_url()[server.base_url().len()..]).await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let big = envelope(None, &format!("\"{}\"", "z".repeat(60_000)), 0);
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut ws = server.join().await?;
        for _ in 0..50 {
            send(&mut ws, &big).await?;
        }
        senders.push(ws);
    }
    // 12 MB were sent; the server holds at most its budget and drops the rest.
    let health = server
        .wait_health("drops", |h| {
            h.stats.relayed_to_root + h.stats.dropped_over_budget + h.stats.dropped_queue_full
                == 200
        })
        .await?;
    assert!(health.queued_bytes <= BUDGET, "{}", health.queued_bytes);
    assert!(health.stats.dropped_over_budget > 0, "{:?}", health.stats);
    // Once the root is gone, every byte is given back.
    drop(root);
    server
        .wait_health("released", |h| h.queued_bytes == 0 && !h.root_connected)
        .await?;
    Ok(())
}

#[tokio::test]
async fn unfinished_messages_count_against_the_byte_budget() -> anyhow::Result<()> {
    const BUDGET: usize = 256 * 1024;
    let server = TestServer::with(|c| c.max_reading_bytes = BUDGET).await?;
    // Twelve sockets each send half of a 60 KB message and stop.
    let mut sockets = Vec::new();
    for _ in 0..12 {
        let mut raw = RawClient::connect(server.addr, "/join").await?;
        let mut head = vec![0x81, 0x80 | 126];
        head.extend_from_slice(&60_000u16.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        head.extend(std::iter::repeat_n(b'x', 30_000));
        raw.stream.write_all(&head).await?;
        sockets.push(raw);
    }
    let health = server
        .wait_health("closes", |h| h.stats.closed_over_budget > 0)
        .await?;
    assert!(health.reading_bytes <= BUDGET, "{}", health.reading_bytes);
    // The ones closed got 1013; the others are still open, holding their share.
    let mut codes = Vec::new();
    for raw in &mut sockets {
        if let Ok(code) = tokio::time::timeout(Duration::from_millis(200), raw.close_code()).await {
            codes.push(code?);
        }
    }
    assert!(codes.contains(&Some(1013)), "{codes:?}");
    // Closing them gives every byte back.
    drop(sockets);
    server
        .wait_health("released", |h| h.reading_bytes == 0 && h.prospects == 0)
        .await?;
    Ok(())
}

/// A WebSocket client on `path` whose connection comes from `source`.
async fn connect_from(server: &TestServer, source: [u8; 4], path: &str) -> anyhow::Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(server.addr).await?;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(
            server.url(path),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        ),
    )
    .await??;
    Ok(ws)
}

#[tokio::test]
async fn a_flood_through_many_sockets_leaves_room_for_other_newcomers() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.root_bytes_per_client = 256 * 1024).await?;
    // A root that is not reading yet.
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    // 25 sockets of one client (127.0.0.2), each within its own rate, send the root
    // 60 KB messages: 300 MB if it all queued.
    let big = envelope(None, &format!("\"{}\"", "f".repeat(60_000)), 0);
    let mut flood = Vec::new();
    for _ in 0..25 {
        flood.push(connect_from(&server, [127, 0, 0, 2], "/join").await?);
    }
    for ws in &mut flood {
        for _ in 0..40 {
            send(ws, &big).await?;
        }
    }
    server
        .wait_health("the flood queued or dropped", |h| {
            h.stats.relayed_to_root + h.stats.dropped_root_share == 1000
        })
        .await?;
    // Newcomers elsewhere (127.0.0.1) still get their offers to the root.
    let mut newcomers = Vec::new();
    for i in 0..10 {
        let mut ws = server.join().await?;
        send(&mut ws, &envelope(None, &format!("\"offer {i}\""), 0)).await?;
        newcomers.push(ws);
    }
    server
        .wait_health("offers queued", |h| h.stats.relayed_to_root >= 10)
        .await?;
    let mut offers = 0;
    while offers < 10 {
        let got = recv(&mut root).await?;
        if field(&got, "signal")?
            .as_str()
            .is_some_and(|s| s.starts_with("offer"))
        {
            offers += 1;
        }
    }
    let health = server.health();
    assert!(health.stats.dropped_root_share > 900, "{:?}", health.stats);
    assert_eq!(health.stats.dropped_queue_full, 0, "{:?}", health.stats);
    Ok(())
}
