//! Bad input and limits: every case drops and counts, closes only the offending socket
//! with the right code, and a concurrent well-behaved handshake still completes.

mod common;

use std::time::Duration;

use bootstrap_protocol::close;
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Starts a server and a root, runs `abuse` concurrently with a full handshake, and
/// checks both the handshake and that the server is still healthy afterwards.
async fn with_handshake<F, Fut>(server: &TestServer, abuse: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let (abused, handshaken) = tokio::join!(abuse(), handshake(server, &mut root));
    abused?;
    handshaken?;
    // And again after the abuse is over.
    handshake(server, &mut root).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_json_null_and_non_objects_are_dropped_then_closed_with_1007()
-> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_bad_messages = 6).await?;
    with_handshake(&server, || async {
        let mut bad = server.join().await?;
        for frame in ["{", "heartbeat", "null", "5", "[1,2]", "\"x\""] {
            send(&mut bad, frame).await?;
        }
        let frame = recv_close(&mut bad).await?.expect("a close code");
        assert_eq!(u16::from(frame.code), close::INVALID_PAYLOAD);
        Ok(())
    })
    .await?;
    assert_eq!(server.health().stats.invalid_messages, 6);
    Ok(())
}

#[tokio::test]
async fn a_few_bad_messages_do_not_close_the_socket() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peer = server.join().await?;
    send(&mut peer, "not json").await?;
    send(&mut peer, "null").await?;
    send(&mut peer, &envelope(None, "{}", 0)).await?;
    assert_eq!(field(&recv(&mut root).await?, "rank")?, 0);
    assert_eq!(server.health().stats.invalid_messages, 2);
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_with_1007() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    with_handshake(&server, || async {
        let mut raw = RawClient::connect(server.addr, "/join").await?;
        raw.frame(TEXT, b"{\"signal\":\"\xff\xfe\"}").await?;
        assert_eq!(raw.close_code().await?, Some(close::INVALID_PAYLOAD));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_binary_frames_are_dropped_and_counted() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_bad_messages = 3).await?;
    with_handshake(&server, || async {
        let mut raw = RawClient::connect(server.addr, "/join").await?;
        for _ in 0..3 {
            raw.frame(BINARY, b"\xff\xfe{}").await?;
        }
        assert_eq!(raw.close_code().await?, Some(close::INVALID_PAYLOAD));
        Ok(())
    })
    .await?;
    assert_eq!(server.health().stats.invalid_messages, 3);
    Ok(())
}

#[tokio::test]
async fn protocol_errors_close_with_1002() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    with_handshake(&server, || async {
        // RSV1 set without a negotiated extension: this crashes the JS server.
        let mut raw = RawClient::connect(server.addr, "/join").await?;
        raw.frame(0x80 | 0x40 | 0x1, b"{}").await?;
        assert_eq!(raw.close_code().await?, Some(close::PROTOCOL_ERROR));
        // An unknown opcode.
        let mut raw = RawClient::connect(server.addr, "/join").await?;
        raw.frame(0x80 | 0x3, b"{}").await?;
        assert_eq!(raw.close_code().await?, Some(close::PROTOCOL_ERROR));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn oversize_frames_close_with_1009() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_frame_bytes = 8 * 1024).await?;
    with_handshake(&server, || async {
        let mut big = server.join().await?;
        let payload = envelope(None, &format!("\"{}\"", "x".repeat(9 * 1024)), 0);
        // The server may close before the whole frame is written.
        let _ = big.send(Message::text(payload)).await;
        let frame = recv_close(&mut big).await?.expect("a close code");
        assert_eq!(u16::from(frame.code), close::TOO_BIG);
        Ok(())
    })
    .await?;
    // Right under the limit still passes.
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.stats.roots == 2).await?;
    let mut ok = server.join().await?;
    let sent = envelope(None, &format!("\"{}\"", "x".repeat(7 * 1024)), 0);
    send(&mut ok, &sent).await?;
    let got = recv(&mut root).await?;
    assert_eq!(
        got,
        sent.replacen("null", &format!("\"{}\"", origin(&got)?), 1)
    );
    Ok(())
}

#[tokio::test]
async fn floods_are_dropped_then_closed_with_1008() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.rate_per_second = 20;
        c.rate_burst = 50;
        c.max_bad_messages = 20;
    })
    .await?;
    with_handshake(&server, || async {
        let mut flood = server.join().await?;
        for rank in 0..200 {
            if flood
                .send(Message::text(envelope(None, "{}", rank)))
                .await
                .is_err()
            {
                break; // closed by the server mid-flood
            }
        }
        let frame = recv_close(&mut flood).await?.expect("a close code");
        assert_eq!(u16::from(frame.code), close::POLICY);
        Ok(())
    })
    .await?;
    let stats = server.health().stats;
    assert_eq!(stats.flood_messages, 20);
    // The root got the burst (and nothing past it) plus two handshakes' worth.
    assert!(stats.relayed_to_root <= 50 + 2 * 3 + 2, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_and_others_are_unaffected() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.write_timeout = Duration::from_millis(500);
        c.rate_per_second = 100_000;
        c.rate_burst = 100_000;
        c.max_frame_bytes = 64 * 1024;
    })
    .await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    // The sink announces itself to the root, then never reads again.
    let mut sink = RawClient::connect(server.addr, "/join").await?;
    sink.frame(TEXT, envelope(None, "{}", 0).as_bytes()).await?;
    let sink_id = origin(&recv(&mut root).await?)?;
    let mut sender = server.join().await?;
    let big = envelope(Some(&sink_id), &format!("\"{}\"", "y".repeat(60 * 1024)), 0);
    let (flooded, handshaken) = tokio::join!(
        async {
            // Far more than socket buffers hold: the sink's queue fills and stays full.
            for _ in 0..400 {
                sender.send(Message::text(big.clone())).await?;
            }
            server
                .wait_health("stuck socket closed", |h| h.stats.abusive_closes == 1)
                .await
        },
        handshake(&server, &mut root)
    );
    let health = flooded?;
    handshaken?;
    assert!(health.stats.dropped_queue_full > 0, "{:?}", health.stats);
    server
        .wait_health("sink removed", |h| h.prospects == 1)
        .await?;
    Ok(())
}

#[tokio::test]
async fn many_bad_clients_at_once_do_not_stop_good_ones() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_bad_messages = 5).await?;
    with_handshake(&server, || async {
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let url = server.url("/join");
            tasks.push(tokio::spawn(async move {
                let mut ws = connect(&url).await?;
                for _ in 0..5 {
                    ws.send(Message::text(if i % 2 == 0 { "null" } else { "{{{" }))
                        .await?;
                }
                let frame = recv_close(&mut ws).await?.expect("a close code");
                anyhow::ensure!(u16::from(frame.code) == close::INVALID_PAYLOAD);
                Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
    .await?;
    assert_eq!(server.health().stats.invalid_messages, 250);
    Ok(())
}

#[tokio::test]
async fn root_with_bad_input_is_closed_but_the_server_survives() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_bad_messages = 3).await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    // A bare `heartbeat` crashes the JS server.
    for _ in 0..3 {
        send(&mut root, "heartbeat").await?;
    }
    let frame = recv_close(&mut root).await?.expect("a close code");
    assert_eq!(u16::from(frame.code), close::INVALID_PAYLOAD);
    server
        .wait_health("root gone", |h| !h.root_connected)
        .await?;
    let mut root = server.root().await?;
    server
        .wait_health("root back", |h| h.root_connected)
        .await?;
    handshake(&server, &mut root).await
}

#[tokio::test]
async fn clients_that_vanish_mid_upgrade_release_their_slot_at_once() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let server = TestServer::with(|c| c.max_prospects = 10).await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let request = upgrade_request(server.addr, "/join");
    // Twice the cap: a slot that stayed taken would refuse the later ones.
    for round in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await?;
        if round % 2 == 0 {
            // The whole request, then gone before reading the answer.
            tcp.write_all(request.as_bytes()).await?;
        } else {
            // Half a request head, then gone.
            tcp.write_all(&request.as_bytes()[..40]).await?;
        }
        drop(tcp);
    }
    // Released as soon as the server sees the connection end: well within a second,
    // not at some timeout (the request-head timeout is 10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut health = server.health();
    // Every whole request was admitted (and so took a slot), then released.
    while health.stats.joins != 10 || health.prospects != 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "slots still taken: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        health = server.health();
    }
    assert_eq!(health.stats.joins_refused, 0, "{health:?}");
    handshake(&server, &mut root).await
}
