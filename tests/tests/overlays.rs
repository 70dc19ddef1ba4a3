//! Named overlays and token auth through a real server: isolation between overlays,
//! every token carrier, every refusal, the throttle, root tokens and dynamic overlays.

mod common;

use std::time::Duration;

use anyhow::{Context as _, bail};
use bootstrap_testkit::tokens::{join_token, key, root_token, token, unix_now};
use common::*;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};
use webrtc_bootstrap_server::{JoinAuth, OverlayConfig};

/// A server with overlays `a` and `b`, beside the default one.
async fn two_overlays(
    adjust: impl FnOnce(&mut webrtc_bootstrap_server::Config),
) -> anyhow::Result<TestServer> {
    TestServer::with(|c| {
        c.overlays
            .insert("a".into(), OverlayConfig::new("secret-a"));
        c.overlays
            .insert("b".into(), OverlayConfig::new("secret-b"));
        adjust(c);
    })
    .await
}

/// The HTTP status a refused upgrade got.
async fn refused(url: &str) -> anyhow::Result<StatusCode> {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => bail!("{url} was accepted"),
        Err(WsError::Http(response)) => Ok(response.status()),
        Err(other) => bail!("{url}: {other}"),
    }
}

#[tokio::test]
async fn overlays_are_isolated_and_a_cross_overlay_destination_is_dropped() -> anyhow::Result<()> {
    let server = two_overlays(|_| {}).await?;
    let mut root_a = connect(&server.url("/o/a/secret-a/webrtc-bootstrap-root")).await?;
    let mut root_b = connect(&server.url("/o/b/secret-b/webrtc-bootstrap-root")).await?;
    server
        .wait_health("both roots", |h| {
            h.overlays.iter().filter(|o| o.root_connected).count() == 2
        })
        .await?;
    let mut in_a = connect(&server.url("/o/a/join")).await?;
    let mut in_b = connect(&server.url("/o/b/join")).await?;
    send(&mut in_a, &envelope(None, "\"for root a\"", 0)).await?;
    send(&mut in_b, &envelope(None, "\"for root b\"", 0)).await?;
    let got_a = recv(&mut root_a).await?;
    let got_b = recv(&mut root_b).await?;
    assert_eq!(field(&got_a, "signal")?, "for root a");
    assert_eq!(field(&got_b, "signal")?, "for root b");
    // A socket of `a` addressing a socket of `b` by its id: unknown in `a`, dropped.
    let id_b = origin(&got_b)?;
    send(&mut in_a, &envelope(Some(&id_b), "\"across\"", 1)).await?;
    let health = server
        .wait_health("the drop", |h| h.stats.dropped_unknown_destination == 1)
        .await?;
    let a = health
        .overlays
        .iter()
        .find(|o| o.name == "a")
        .context("a")?;
    assert_eq!(a.stats.dropped_unknown_destination, 1);
    assert_eq!((a.prospects, a.stats.relayed_to_root), (1, 1));
    expect_silence(&mut in_b, Duration::from_millis(200)).await?;
    // The default overlay has no root: its joins are dropped as before.
    let mut plain = server.join().await?;
    send(&mut plain, &envelope(None, "\"nobody\"", 0)).await?;
    server
        .wait_health("no root", |h| h.stats.dropped_no_root == 1)
        .await?;
    expect_silence(&mut root_a, Duration::from_millis(100)).await?;
    Ok(())
}

#[tokio::test]
async fn the_newest_root_wins_within_its_overlay_only() -> anyhow::Result<()> {
    let server = two_overlays(|_| {}).await?;
    let mut first_a = connect(&server.url("/o/a/secret-a/webrtc-bootstrap-root")).await?;
    let mut root_b = connect(&server.url("/o/b/secret-b/webrtc-bootstrap-root")).await?;
    server
        .wait_health("roots", |h| {
            h.overlays.iter().filter(|o| o.root_connected).count() == 2
        })
        .await?;
    let _second_a = connect(&server.url("/o/a/secret-a/webrtc-bootstrap-root")).await?;
    let close = recv_close(&mut first_a).await?.context("a close frame")?;
    assert_eq!(u16::from(close.code), 4000);
    expect_silence(&mut root_b, Duration::from_millis(200)).await?;
    let mut in_b = connect(&server.url("/o/b/join")).await?;
    send(&mut in_b, &envelope(None, "\"still here\"", 0)).await?;
    assert_eq!(field(&recv(&mut root_b).await?, "signal")?, "still here");
    Ok(())
}

#[tokio::test]
async fn unknown_overlays_and_wrong_secrets_are_not_found() -> anyhow::Result<()> {
    let server = two_overlays(|_| {}).await?;
    assert_eq!(
        refused(&server.url("/o/nope/join")).await?,
        StatusCode::NOT_FOUND
    );
    for path in [
        "/o/a/secret-b/webrtc-bootstrap-root",
        "/o/nope/secret-a/webrtc-bootstrap-root",
        "/secret-a/webrtc-bootstrap-root",
        "/o/a%2Fb/join",
    ] {
        assert_eq!(
            refused(&server.url(path)).await?,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // `/o/default` is the default overlay.
    let _root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    let mut alias = connect(&server.url("/o/default/join")).await?;
    send(&mut alias, &envelope(None, "\"x\"", 0)).await?;
    server
        .wait_health("relayed", |h| h.stats.relayed_to_root == 1)
        .await?;
    // `/healthz` names every overlay and no secret.
    let body = reqwest_healthz(&server).await?;
    assert!(
        body.contains("\"name\":\"a\"") && body.contains("\"name\":\"default\""),
        "{body}"
    );
    assert!(
        !body.contains("secret-a") && !body.contains(SECRET),
        "{body}"
    );
    Ok(())
}

/// `GET /healthz` over a plain TCP connection.
async fn reqwest_healthz(server: &TestServer) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut body)).await??;
    Ok(body)
}

/// A server that needs join tokens, with overlay `a` whose root uses its secret.
async fn with_join_auth() -> anyhow::Result<TestServer> {
    two_overlays(|c| {
        c.token_key = Some(key());
        c.join_auth = JoinAuth::Token;
    })
    .await
}

#[tokio::test]
async fn every_join_token_carrier_works() -> anyhow::Result<()> {
    let server = with_join_auth().await?;
    let mut root = connect(&server.url("/o/a/secret-a/webrtc-bootstrap-root")).await?;
    let token = join_token("a");
    // The path (unchanged JS clients: host + '/o/a/t/' + token) and the query.
    for url in [
        server.url(&format!("/o/a/t/{token}/join")),
        server.url(&format!("/o/a/join?token={token}")),
        server.url(&format!("/o/a/join?x=1&token={token}")),
    ] {
        let mut ws = connect(&url).await?;
        send(&mut ws, &envelope(None, "\"in\"", 0)).await?;
        assert_eq!(field(&recv(&mut root).await?, "signal")?, "in", "{url}");
    }
    // The subprotocol, which browsers can set: the answer must echo `bearer`.
    let mut request = server.url("/o/a/join").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {token}"))?,
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(HeaderValue::as_bytes),
        Some(&b"bearer"[..])
    );
    send(&mut ws, &envelope(None, "\"by subprotocol\"", 0)).await?;
    assert_eq!(field(&recv(&mut root).await?, "signal")?, "by subprotocol");
    // The default overlay's tokens name it "default".
    let default_token = join_token("default");
    connect(&server.url(&format!("/t/{default_token}/join"))).await?;
    Ok(())
}

#[tokio::test]
async fn bad_tokens_get_401_before_any_upgrade_and_repeated_failures_429() -> anyhow::Result<()> {
    let server = with_join_auth().await?;
    let other_key = TokenKey::from_bytes(b"another key, also long enough for HS256").expect("key");
    let forged = other_key.mint(&Claims {
        exp: unix_now() + 600,
        aud: Audience::Join,
        ovl: "a".into(),
        sub: None,
        nbf: None,
    })?;
    let cases = [
        ("missing", server.url("/o/a/join")),
        (
            "expired",
            server.url(&format!(
                "/o/a/t/{}/join",
                token(Audience::Join, "a", unix_now() - 120)
            )),
        ),
        (
            "wrong audience",
            server.url(&format!("/o/a/t/{}/join", root_token("a"))),
        ),
        (
            "wrong overlay",
            server.url(&format!("/o/a/t/{}/join", join_token("b"))),
        ),
        (
            "bad signature",
            server.url(&format!("/o/a/t/{forged}/join")),
        ),
        ("garbage", server.url("/o/a/join?token=a.b.c")),
    ];
    for (why, url) in &cases {
        assert_eq!(refused(url).await?, StatusCode::UNAUTHORIZED, "{why}");
    }
    assert_eq!(server.health().stats.auth_failures, cases.len() as u64);
    assert_eq!(server.health().prospects, 0);
    // Ten failures in a minute from one address: the next attempt, even with a good
    // token, is throttled.
    for _ in cases.len()..10 {
        assert_eq!(refused(&cases[0].1).await?, StatusCode::UNAUTHORIZED);
    }
    let good = server.url(&format!("/o/a/t/{}/join", join_token("a")));
    match tokio_tungstenite::connect_async(&good).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let retry: u64 = response
                .headers()
                .get("retry-after")
                .context("Retry-After")?
                .to_str()?
                .parse()?;
            assert!((1..=60).contains(&retry), "{retry}");
        }
        other => bail!("expected 429, got {other:?}"),
    }
    assert_eq!(server.health().stats.auth_throttled, 1);
    Ok(())
}

#[tokio::test]
async fn a_root_token_replaces_the_secret_and_creates_a_dynamic_overlay() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.token_key = Some(key());
        c.dynamic_overlays = true;
        c.max_overlays = 2; // the default overlay and one more
    })
    .await?;
    // A join token is no root token.
    let join_as_root = server.url(&format!(
        "/o/alice/{}/webrtc-bootstrap-root",
        join_token("alice")
    ));
    assert_eq!(refused(&join_as_root).await?, StatusCode::UNAUTHORIZED);
    let alice = root_token("alice");
    let mut root = connect(&server.url(&format!("/o/alice/{alice}/webrtc-bootstrap-root"))).await?;
    server
        .wait_health("alice", |h| {
            h.overlays
                .iter()
                .any(|o| o.name == "alice" && o.root_connected)
        })
        .await?;
    let mut caller = connect(&server.url("/o/alice/join")).await?;
    send(&mut caller, &envelope(None, "\"call\"", 0)).await?;
    assert_eq!(field(&recv(&mut root).await?, "signal")?, "call");
    // A third overlay is one too many.
    let bob = root_token("bob");
    assert_eq!(
        refused(&server.url(&format!("/o/bob/{bob}/webrtc-bootstrap-root"))).await?,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(server.health().stats.overlays_refused, 1);
    // Gone once its root and its last /join socket have left.
    root.close(None).await?;
    caller.close(None).await?;
    server
        .wait_health("alice removed", |h| {
            h.overlays.iter().all(|o| o.name != "alice")
        })
        .await?;
    assert_eq!(
        refused(&server.url("/o/alice/join")).await?,
        StatusCode::NOT_FOUND
    );
    connect(&server.url(&format!("/o/bob/{bob}/webrtc-bootstrap-root"))).await?;
    Ok(())
}

#[tokio::test]
async fn without_a_token_key_the_default_overlay_is_unchanged() -> anyhow::Result<()> {
    // A default-overlay root whose secret is `o` still connects at `/o/webrtc-bootstrap-root`.
    let server = TestServer::with_secret("o").await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    handshake(&server, &mut root).await?;
    let token = join_token("default");
    // Tokens mean nothing without a key: a path token still reaches the overlay.
    connect(&server.url(&format!("/t/{token}/join"))).await?;
    Ok(())
}
