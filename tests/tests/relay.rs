//! Routing, ids, heartbeat, root replacement, timeouts, caps, health and shutdown,
//! against a real server on `127.0.0.1:0` with real WebSocket clients.

mod common;

use std::time::Duration;

use bootstrap_protocol::{IdGenerator, close};
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn full_handshake_routes_both_ways() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    handshake(&server, &mut root).await?;
    let health = server
        .wait_health("sockets closed", |h| h.prospects == 0)
        .await?;
    assert_eq!(health.stats.relayed_to_root, 3);
    assert_eq!(health.stats.relayed_to_peer, 3);
    Ok(())
}

#[tokio::test]
async fn origin_is_overwritten_and_everything_else_kept_byte_for_byte() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peer = server.join().await?;
    let sent = r#"{"origin":"ffffffffffffffffffffffffffffffff","destination":null,"signal":{ "sdp" : "v=0\r\n\u00e9", "n":1.50e3 },"rank":7,"extra":[1, {"a":null}]}"#;
    send(&mut peer, sent).await?;
    let got = recv(&mut root).await?;
    let id = origin(&got)?;
    assert_ne!(id, "ffffffffffffffffffffffffffffffff");
    assert_eq!(got, sent.replace("ffffffffffffffffffffffffffffffff", &id));
    // No origin key: appended last, as JS does.
    send(&mut peer, r#"{"signal":1,"rank":0}"#).await?;
    assert_eq!(
        recv(&mut root).await?,
        format!(r#"{{"signal":1,"rank":0,"origin":"{id}"}}"#)
    );
    Ok(())
}

#[tokio::test]
async fn falsy_destinations_go_to_the_root_and_unknown_ones_are_dropped() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peer = server.join().await?;
    for destination in ["null", "\"\"", "0", "-0", "0.0", "false"] {
        send(
            &mut peer,
            &format!(r#"{{"origin":null,"destination":{destination},"signal":{{}},"rank":0}}"#),
        )
        .await?;
        let got = recv(&mut root).await?;
        assert!(
            got.contains(&format!(r#""destination":{destination},"#)),
            "{got}"
        );
    }
    send(&mut peer, r#"{"signal":{}}"#).await?;
    recv(&mut root).await?;
    let unknown = [
        "\"0123456789abcdef0123456789abcdef\"",
        "\"__proto__\"",
        "true",
        "1",
        "{}",
        "[]",
    ];
    for destination in unknown {
        send(
            &mut peer,
            &format!(r#"{{"origin":null,"destination":{destination},"signal":{{}},"rank":0}}"#),
        )
        .await?;
    }
    expect_silence(&mut root, Duration::from_millis(200)).await?;
    let health = server
        .wait_health("drops counted", |h| {
            h.stats.dropped_unknown_destination == 6
        })
        .await?;
    assert_eq!(health.stats.relayed_to_root, 7);
    Ok(())
}

#[tokio::test]
async fn binary_frames_are_relayed_as_text() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peer = server.join().await?;
    peer.send(Message::binary(envelope(None, "{}", 0).into_bytes()))
        .await?;
    let got = recv(&mut root).await?;
    assert_eq!(field(&got, "rank")?, 0);
    Ok(())
}

#[tokio::test]
async fn seeded_ids_are_deterministic() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.seed = Some(42)).await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut expected = IdGenerator::seeded(42);
    for _ in 0..3 {
        let mut peer = server.join().await?;
        send(&mut peer, &envelope(None, "{}", 0)).await?;
        let got = recv(&mut root).await?;
        assert_eq!(origin(&got)?, expected.next_id().to_string());
    }
    Ok(())
}

#[tokio::test]
async fn ids_are_32_lowercase_hex_and_distinct() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peers = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut peer = server.join().await?;
        send(&mut peer, &envelope(None, "{}", 0)).await?;
        let id = origin(&recv(&mut root).await?)?;
        assert!(
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
        assert!(ids.insert(id));
        peers.push(peer);
    }
    Ok(())
}

#[tokio::test]
async fn root_gets_heartbeats_and_may_send_them() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.heartbeat_interval = Duration::from_millis(100)).await?;
    let mut root = server.root().await?;
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(recv_any(&mut root).await?, "\"heartbeat\"");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "heartbeats too fast"
    );
    send(&mut root, "\"heartbeat\"").await?;
    send(&mut root, r#"{"unexpected":true}"#).await?;
    // Messages from the root are never relayed, even with a destination.
    let mut peer = server.join().await?;
    send(&mut peer, &envelope(None, "{}", 0)).await?;
    let id = origin(&recv(&mut root).await?)?;
    send(&mut root, &envelope(Some(&id), "{}", 0)).await?;
    expect_silence(&mut peer, Duration::from_millis(200)).await?;
    assert!(server.health().root_connected);
    assert_eq!(server.health().stats.invalid_messages, 0);
    Ok(())
}

#[tokio::test]
async fn newest_root_replaces_the_old_one() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut first = server.root().await?;
    server
        .wait_health("first root", |h| h.stats.roots == 1)
        .await?;
    let mut second = server.root().await?;
    let frame = recv_close(&mut first).await?.expect("a close code");
    assert_eq!(u16::from(frame.code), close::ROOT_REPLACED);
    assert_eq!(frame.reason.as_str(), close::REASON_ROOT_REPLACED);
    let mut peer = server.join().await?;
    send(&mut peer, &envelope(None, "{}", 0)).await?;
    recv(&mut second).await?;
    // The old root's close does not unregister the new one.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.health().root_connected);
    Ok(())
}

#[tokio::test]
async fn a_root_that_never_answers_pings_is_dropped() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.root_ping_timeout = Duration::from_millis(200);
    })
    .await?;
    // A raw socket never reads, so never answers pings.
    let _silent =
        RawClient::connect(server.addr, &format!("/{SECRET}/webrtc-bootstrap-root")).await?;
    server.wait_health("root", |h| h.root_connected).await?;
    server
        .wait_health("dead root dropped", |h| !h.root_connected)
        .await?;
    // A root that reads (and so answers pings) stays.
    let mut live = server.root().await?;
    server
        .wait_health("live root", |h| h.root_connected)
        .await?;
    let reader =
        tokio::spawn(async move { expect_silence(&mut live, Duration::from_millis(800)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(server.health().root_connected);
    reader.await??;
    Ok(())
}

#[tokio::test]
async fn a_standby_root_takes_over_from_a_root_that_stops_answering_pings() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.root_ping_timeout = Duration::from_millis(300);
    })
    .await?;
    let root_path = format!("/{SECRET}/webrtc-bootstrap-root");
    // The active root never reads, so it never answers pings (a hung process).
    let _hung = RawClient::connect(server.addr, &root_path).await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut standby = connect(&server.url(&format!("{root_path}?standby=1"))).await?;
    assert_eq!(recv(&mut standby).await?, "\"standby\"");
    let mut newcomer = server.join().await?;
    // The standby reads (and answers pings), gets heartbeats but no request, and is
    // promoted once the hung root is dropped; the requests then come to it.
    let promoted = recv(&mut standby).await?;
    assert_eq!(promoted, "\"promoted\"");
    let health = server.health();
    assert_eq!(
        (
            health.stats.roots_promoted,
            health.overlays[0].standby_roots
        ),
        (1, 0)
    );
    send(&mut newcomer, &envelope(None, "{\"offer\":1}", 0)).await?;
    let request = recv(&mut standby).await?;
    assert_eq!(field(&request, "signal")?, serde_json::json!({"offer": 1}));
    Ok(())
}

#[tokio::test]
async fn standby_roots_past_the_cap_are_refused_with_503() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _root = server.root().await?;
    let url = server.url(&format!("/{SECRET}/webrtc-bootstrap-root?standby=1"));
    let mut standbys = Vec::new();
    for _ in 0..16 {
        let mut standby = connect(&url).await?;
        assert_eq!(recv(&mut standby).await?, "\"standby\"");
        standbys.push(standby);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => anyhow::bail!("a 17th standby root: {other:?}"),
    }
    assert_eq!(server.health().overlays[0].standby_roots, 16);
    Ok(())
}

#[tokio::test]
async fn join_sockets_close_at_their_timeout_without_status() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.timeout = Duration::from_millis(400)).await?;
    let opened = tokio::time::Instant::now();
    let mut peer = server.join().await?;
    assert_eq!(recv_close(&mut peer).await?, None);
    let lifetime = opened.elapsed();
    assert!(
        lifetime >= Duration::from_millis(380),
        "closed early: {lifetime:?}"
    );
    let health = server
        .wait_health("prospect removed", |h| h.prospects == 0)
        .await?;
    assert_eq!(health.stats.timeouts, 1);
    Ok(())
}

#[tokio::test]
async fn messages_without_a_root_are_dropped_and_counted() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut peer = server.join().await?;
    send(&mut peer, &envelope(None, "{}", 0)).await?;
    server
        .wait_health("drop counted", |h| h.stats.dropped_no_root == 1)
        .await?;
    // A late root does not get old messages.
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    expect_silence(&mut root, Duration::from_millis(100)).await?;
    Ok(())
}

#[tokio::test]
async fn routes_and_paths_match_the_js_server() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // Query strings are ignored.
    let mut root = connect(&server.url(&format!("/{SECRET}/webrtc-bootstrap-root?x=1"))).await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut peer = connect(&server.url("/join?foo=bar")).await?;
    send(&mut peer, &envelope(None, "{}", 0)).await?;
    recv(&mut root).await?;
    // Wrong secret, unknown paths: no WebSocket, a plain 404.
    for path in [
        "/wrong/webrtc-bootstrap-root",
        "/join/",
        "/",
        "/join/abc",
        &format!("/{SECRET}"),
        "/test-secreT/webrtc-bootstrap-root",
    ] {
        match connect(&server.url(path)).await {
            Err(error) => {
                let text = format!("{error:#}");
                assert!(text.contains("404"), "{path}: {text}");
            }
            Ok(_) => panic!("{path} upgraded"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn healthz_reports_status() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let _root = server.root().await?;
    let _a = server.join().await?;
    let _b = server.join().await?;
    server
        .wait_health("sockets", |h| h.prospects == 2 && h.root_connected)
        .await?;
    let reply = http_get(server.addr, "/healthz").await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json()?;
    assert_eq!(json["status"], "ok");
    assert_eq!(json["root_connected"], true);
    assert_eq!(json["prospects"], 2);
    assert!(json["uptime_seconds"].as_f64().is_some());
    assert_eq!(json["stats"]["joins"], 2);
    Ok(())
}

#[tokio::test]
async fn join_cap_answers_503_and_frees_slots() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.max_prospects = 2).await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let a = server.join().await?;
    let _b = server.join().await?;
    let refused = format!("{:#}", server.join().await.expect_err("refused"));
    assert!(refused.contains("503"), "{refused}");
    drop(a);
    server
        .wait_health("slot freed", |h| h.prospects == 1)
        .await?;
    let mut c = server.join().await?;
    send(&mut c, &envelope(None, "{}", 0)).await?;
    recv(&mut root).await?;
    assert_eq!(server.health().stats.joins_refused, 1);
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    let mut peer = server.join().await?;
    server
        .wait_health("sockets", |h| h.root_connected && h.prospects == 1)
        .await?;
    let token = server.state.shutdown_token();
    let stopping = tokio::spawn(server.stop());
    for ws in [&mut root, &mut peer] {
        let frame = recv_close(ws).await?.expect("a close code");
        assert_eq!(u16::from(frame.code), close::GOING_AWAY);
    }
    tokio::time::timeout(Duration::from_secs(5), stopping).await???;
    assert!(token.is_cancelled());
    assert!(
        tokio::net::TcpStream::connect(root_addr(&root))
            .await
            .is_err(),
        "still accepting"
    );
    Ok(())
}

fn root_addr(ws: &Ws) -> std::net::SocketAddr {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.peer_addr().expect("peer addr"),
        _ => unreachable!("plain TCP only"),
    }
}

#[tokio::test]
async fn a_client_close_gets_the_closing_handshake() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut peer = server.join().await?;
    server.wait_health("joined", |h| h.prospects == 1).await?;
    peer.close(None).await?;
    // The server answers the close frame (tungstenite then reports the stream's end)
    // instead of dropping the connection.
    let reply = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut peer)).await?;
    assert!(
        matches!(reply, Some(Ok(Message::Close(_))) | None),
        "{reply:?}"
    );
    server.wait_health("left", |h| h.prospects == 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_relayed() -> anyhow::Result<()> {
    use bootstrap_ws::{OpCode, encode_frame};
    use tokio::io::AsyncWriteExt as _;
    let server = TestServer::start().await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    // Request and first frame in one write, before the `101` could have been read: the
    // frame arrives in the same read as the request head.
    let mut bytes = upgrade_request(server.addr, "/join").into_bytes();
    let text = envelope(None, "\"early\"", 0);
    encode_frame(
        &mut bytes,
        OpCode::Text,
        text.as_bytes(),
        Some([9, 8, 7, 6]),
    );
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await?;
    tcp.write_all(&bytes).await?;
    let got = recv(&mut root).await?;
    assert_eq!(field(&got, "signal")?, "early", "{got}");
    drop(tcp);
    server
        .wait_health("prospect removed", |h| h.prospects == 0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_router_also_relays_behind_axum_serve() -> anyhow::Result<()> {
    // `router(state)` served by another server: the upgraded connection stays inside
    // hyper's wrapper instead of being a plain `TcpStream`.
    let state =
        webrtc_bootstrap_server::AppState::new(webrtc_bootstrap_server::Config::new("s3cret"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = webrtc_bootstrap_server::router(state);
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut root = connect(&format!("ws://{addr}/s3cret/webrtc-bootstrap-root")).await?;
    let mut a = connect(&format!("ws://{addr}/join")).await?;
    let mut b = connect(&format!("ws://{addr}/join")).await?;
    send(&mut a, &envelope(None, "\"offer\"", 0)).await?;
    let at_root = recv(&mut root).await?;
    let a_id = origin(&at_root)?;
    assert_eq!(field(&at_root, "signal")?, "offer");
    send(&mut b, &envelope(Some(&a_id), "\"answer\"", 0)).await?;
    let at_a = recv(&mut a).await?;
    assert_eq!(field(&at_a, "signal")?, "answer");
    assert_ne!(origin(&at_a)?, a_id);
    served.abort();
    Ok(())
}
