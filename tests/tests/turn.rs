//! TURN: the server's `/ice-servers` (ephemeral TURN REST API credentials) and peers that
//! relay every byte through the real coturn with them.
//!
//! The `/ice-servers` tests are plain HTTP on 127.0.0.1. The relay tests start Debian's
//! `turnserver` ([`Coturn`]) inside a loopback-only network namespace, with the secret the
//! signaling server shares with it; without it they print SKIPPED, or fail under `CI`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::tokens::{join_token, key, token, unix_now};
use bootstrap_testkit::turn::Coturn;
use bootstrap_testkit::{TestServer, in_loopback_netns, report, skip_or_fail};
use common::{Reply, http, http_get};
use serde_json::json;
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions};
use webrtc_bootstrap_peer::{CandidateKind, Client, Error, IceServer, Message, Options, Peer};
use webrtc_bootstrap_server::auth::Audience;
use webrtc_bootstrap_server::turn::{TurnConfig, rest_password, rest_username};
use webrtc_bootstrap_server::{JoinAuth, OverlayConfig};

const SECRET: &str = "turn-test-root-secret";
const TURN_SECRET: &str = "shared-with-coturn-0123456789";

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> anyhow::Result<Reply> {
    http(addr, method, path, headers).await
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    http_get(addr, path).await
}

fn turn_config(uri: &str) -> TurnConfig {
    TurnConfig::new(TURN_SECRET, vec![uri.to_owned()])
}

/// Checks one `/ice-servers` answer: the RTCConfiguration shape, a credential for
/// `<expiry>:<user>` valid for about `ttl`, and headers that keep it out of caches.
fn check_answer(reply: &Reply, user: &str, ttl: u64) -> anyhow::Result<()> {
    ensure!(reply.status == 200, "{reply:?}");
    ensure!(
        reply.header("cache-control") == Some("no-store"),
        "{reply:?}"
    );
    ensure!(
        reply.header("access-control-allow-origin") == Some("*"),
        "{reply:?}"
    );
    let body = reply.json()?;
    ensure!(body["ttl"] == ttl, "{body}");
    let server = &body["iceServers"][0];
    ensure!(
        server["urls"] == json!(["turn:127.0.0.1:3478?transport=udp"]),
        "{body}"
    );
    let username = server["username"].as_str().context("username")?;
    let (expiry, who) = username.split_once(':').context("expiry:user")?;
    ensure!(who == user, "{username}");
    let expiry: u64 = expiry.parse()?;
    let now = unix_now();
    ensure!(
        (now + ttl - 5..=now + ttl + 1).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    ensure!(
        server["credential"] == rest_password(TURN_SECRET.as_bytes(), username),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn ice_servers_hand_out_fresh_rest_credentials() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        let mut turn = turn_config("turn:127.0.0.1:3478?transport=udp");
        turn.ttl = Duration::from_secs(600);
        turn.stun_uris = vec!["stun:127.0.0.1:3478".to_owned()];
        c.turn = Some(turn);
        c.overlays
            .insert("chat".to_owned(), OverlayConfig::new("chat-secret-0123456"));
    })
    .await?;
    let addr = server.addr;

    let reply = get(addr, "/ice-servers").await?;
    check_answer(&reply, "anonymous", 600)?;
    assert_eq!(
        reply.json()?["iceServers"][1],
        json!({"urls": ["stun:127.0.0.1:3478"]})
    );
    check_answer(&get(addr, "/o/chat/ice-servers").await?, "anonymous", 600)?;
    let head = request(addr, "HEAD", "/ice-servers", "").await?;
    assert_eq!(head.status, 200, "{head:?}");

    assert_eq!(get(addr, "/o/nope/ice-servers").await?.status, 404);
    let post = request(addr, "POST", "/ice-servers", "").await?;
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    let health = server.health();
    assert!(health.turn_credentials);
    assert!(health.stats.ice_servers_issued >= 3, "{:?}", health.stats);
    let text = get(addr, "/healthz").await?.text();
    assert!(text.contains("\"turn_credentials\":true"), "{text}");
    assert!(!text.contains(TURN_SECRET), "{text}");
    server.stop().await
}

#[tokio::test]
async fn without_turn_there_are_no_ice_servers() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    assert_eq!(get(server.addr, "/ice-servers").await?.status, 404);
    assert!(!server.health().turn_credentials);
    server.stop().await
}

#[tokio::test]
async fn ice_servers_are_rate_limited_per_address() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        let mut turn = turn_config("turn:127.0.0.1:3478?transport=udp");
        turn.requests_per_minute = 3;
        c.turn = Some(turn);
    })
    .await?;
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/ice-servers").await?.status, 200);
    }
    let refused = get(server.addr, "/ice-servers").await?;
    assert_eq!(refused.status, 429, "{refused:?}");
    let retry: u64 = refused
        .header("retry-after")
        .context("Retry-After")?
        .parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(server.health().stats.ice_servers_throttled, 1);
    let metrics = get(server.addr, "/metrics").await?;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    for (series, value) in [
        (
            r#"bootstrap_ice_servers_requests_total{outcome="issued"}"#,
            3,
        ),
        (
            r#"bootstrap_ice_servers_requests_total{outcome="throttled"}"#,
            1,
        ),
    ] {
        let body = metrics.text();
        let line = body
            .lines()
            .find(|line| line.starts_with(series))
            .with_context(|| format!("no {series} in\n{body}"))?;
        assert_eq!(line, format!("{series} {value}"));
    }
    server.stop().await
}

#[tokio::test]
async fn with_join_tokens_ice_servers_need_one_and_name_its_subject() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        c.token_key = Some(key());
        c.join_auth = JoinAuth::Token;
        c.turn = Some(turn_config("turn:127.0.0.1:3478?transport=udp"));
        c.overlays
            .insert("chat".to_owned(), OverlayConfig::new("chat-secret-0123456"));
    })
    .await?;
    let addr = server.addr;
    let ttl = TurnConfig::new("x", Vec::new()).ttl.as_secs();
    let chat = join_token("chat");
    // The testkit's tokens carry `sub` "testkit".
    check_answer(
        &get(addr, &format!("/o/chat/ice-servers?token={chat}")).await?,
        "testkit",
        ttl,
    )?;
    check_answer(
        &get(addr, &format!("/o/chat/t/{chat}/ice-servers")).await?,
        "testkit",
        ttl,
    )?;
    check_answer(
        &request(
            addr,
            "GET",
            "/o/chat/ice-servers",
            &format!("Authorization: Bearer {chat}\r\n"),
        )
        .await?,
        "testkit",
        ttl,
    )?;
    for refused in [
        "/o/chat/ice-servers".to_owned(),
        format!("/ice-servers?token={chat}"),
        format!(
            "/o/chat/ice-servers?token={}",
            token(Audience::Join, "chat", unix_now() - 3600)
        ),
        format!(
            "/o/chat/ice-servers?token={}",
            token(Audience::Root, "chat", unix_now() + 3600)
        ),
    ] {
        let reply = get(addr, &refused).await?;
        assert_eq!(reply.status, 401, "{refused}: {reply:?}");
        assert!(!reply.text().contains("credential"), "{reply:?}");
    }
    server.stop().await
}

/// Runs `scenario` in a loopback-only network namespace with a coturn, or skips.
fn with_coturn(
    test: &str,
    scenario: impl AsyncFnOnce(Coturn) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    if !inside && !Coturn::installed() {
        return skip_or_fail(
            test,
            "turnserver is not installed",
            "apt-get install -y coturn",
        );
    }
    in_loopback_netns(test, async || {
        let coturn = Coturn::start(TURN_SECRET).await?;
        tokio::time::timeout(Duration::from_secs(90), scenario(coturn))
            .await
            .context("timed out after 90 s")?
    })
}

/// Relay-only options that take their ICE servers from the signaling server.
fn relay_only() -> Options {
    let mut options = Options::loopback().with_ice_from_server().with_relay_only();
    options.timeout = Duration::from_secs(20);
    options
}

/// A root that answers every join request and echoes what its peers send, in its own
/// task (it lives as long as the runtime).
async fn answering_root(client: &Client) -> anyhow::Result<()> {
    let mut root = client.root(SECRET).await?;
    tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                if let Ok(mut peer) = incoming.accept().connected().await {
                    while let Some(message) = peer.recv().await {
                        if peer.send(&message).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

/// Whether `peer` offered relay candidates only, and sends through the relay.
async fn check_relayed(who: &str, peer: &Peer) -> anyhow::Result<()> {
    let kinds = peer.signaled_candidates();
    ensure!(
        !kinds.is_empty() && kinds.iter().all(|kind| *kind == CandidateKind::Relay),
        "{who} signaled {kinds:?}"
    );
    let path = peer
        .path()
        .await
        .with_context(|| format!("{who}: no path"))?;
    ensure!(path.local == CandidateKind::Relay, "{who}: {path:?}");
    Ok(())
}

#[test]
fn relay_only_peers_connect_through_coturn_with_credentials_from_the_server() -> anyhow::Result<()>
{
    const TEST: &str = "relay_only_peers_connect_through_coturn_with_credentials_from_the_server";
    with_coturn(TEST, async |coturn| {
        let server = TestServer::with(|c| {
            c.secret = SECRET.to_owned();
            c.turn = Some(turn_config(&coturn.uri()));
        })
        .await?;
        let root_client = Client::with_options(&server.base_url(), relay_only())?;
        let mut answered = root_client.root(SECRET).await?;
        let newcomer = Client::with_options(&server.base_url(), relay_only())?;
        let (joined, accepted) = tokio::join!(newcomer.join(), async {
            let incoming = answered.next().await.context("no request")?;
            anyhow::Ok(incoming.accept().connected().await?)
        });
        let (mut joined, mut accepted) = (joined?, accepted?);
        joined.send_text("up through the relay").await?;
        let got = accepted.recv().await.context("nothing arrived")?;
        assert_eq!(got, Message::Text("up through the relay".into()));
        accepted.send_binary(&[1, 2, 3]).await?;
        assert_eq!(
            joined.recv().await.context("nothing came back")?,
            Message::Binary(vec![1, 2, 3])
        );
        check_relayed("newcomer", &joined).await?;
        check_relayed("root's answer", &accepted).await?;
        let allocations = coturn.wait_allocations(2, Duration::from_secs(5)).await;
        ensure!(
            allocations >= 2,
            "coturn logged {allocations} allocations:\n{}",
            coturn.log()
        );
        report(&format!(
            "relayed join: {allocations} allocations on coturn"
        ));
        drop((joined, accepted, answered));
        server.stop().await
    })
}

#[test]
fn a_wrong_secret_or_an_expired_credential_fails_with_ice_failed() -> anyhow::Result<()> {
    const TEST: &str = "a_wrong_secret_or_an_expired_credential_fails_with_ice_failed";
    with_coturn(TEST, async |coturn| {
        // The signaling server hands out credentials signed with another secret.
        let server = TestServer::with(|c| {
            c.secret = SECRET.to_owned();
            c.turn = Some(TurnConfig::new(
                "not-the-secret-coturn-has",
                vec![coturn.uri()],
            ));
        })
        .await?;
        let mut quick = relay_only();
        quick.timeout = Duration::from_secs(6);
        answering_root(&Client::with_options(&server.base_url(), quick.clone())?).await?;
        let started = tokio::time::Instant::now();
        let error = Client::with_options(&server.base_url(), quick.clone())?
            .join()
            .await
            .expect_err("no relay candidate can exist");
        assert!(matches!(error, Error::IceFailed), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(9), "{error:?}");
        server.stop().await?;

        // Credentials that expired a minute ago, with the right secret.
        let server = TestServer::with_secret(SECRET).await?;
        let username = rest_username(unix_now() - 60, "late");
        let expired = IceServer::turn(
            coturn.uri(),
            username.clone(),
            rest_password(TURN_SECRET.as_bytes(), &username),
        );
        let mut stale = Options::loopback().with_relay_only();
        stale.timeout = Duration::from_secs(6);
        stale.ice_servers = vec![expired];
        answering_root(&Client::with_options(&server.base_url(), stale.clone())?).await?;
        let started = tokio::time::Instant::now();
        let error = Client::with_options(&server.base_url(), stale)?
            .join()
            .await
            .expect_err("coturn refuses expired credentials");
        assert!(matches!(error, Error::IceFailed), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(9), "{error:?}");
        ensure!(
            coturn.wait_allocations(1, Duration::from_secs(2)).await == 0,
            "coturn granted an allocation:\n{}",
            coturn.log()
        );
        server.stop().await
    })
}

#[test]
fn without_turn_on_the_server_ice_from_server_is_a_typed_error() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let server = TestServer::with_secret(SECRET).await?;
        let error = Client::with_options(&server.base_url(), relay_only())?
            .join()
            .await
            .expect_err("no /ice-servers");
        match &error {
            Error::IceServers { url, reason } => {
                assert!(url.ends_with("/ice-servers"), "{error}");
                assert!(reason.contains("404"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        server.stop().await
    })
}

#[test]
fn a_relay_only_tree_overlay_forms_and_broadcasts() -> anyhow::Result<()> {
    const TEST: &str = "a_relay_only_tree_overlay_forms_and_broadcasts";
    with_coturn(TEST, async |coturn| {
        let server = TestServer::with(|c| {
            c.secret = SECRET.to_owned();
            c.turn = Some(turn_config(&coturn.uri()));
        })
        .await?;
        let tree = |name: &str| NodeOptions {
            max_degree: 2,
            name: Some(name.to_owned()),
            ..NodeOptions::default()
        };
        let client = || Client::with_options(&server.base_url(), relay_only());
        let root = Node::root(client()?, SECRET, tree("root")).await?;
        let mut nodes = Vec::new();
        for n in 0..5 {
            nodes.push(Node::join(client()?, tree(&format!("n{n}"))).await?);
        }
        // Five nodes under a root of degree 2 make a tree of depth at least 2: some
        // broadcasts cross two relayed hops.
        root.broadcast(json!({"over": "turn"})).await?;
        for node in &mut nodes {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), node.next_event())
                    .await
                    .context("no broadcast")?
                    .context("node closed")?;
                if let Event::Data {
                    delivery: Delivery::Broadcast,
                    data,
                    ..
                } = event
                {
                    assert_eq!(data, json!({"over": "turn"}));
                    break;
                }
            }
        }
        let allocations = coturn.wait_allocations(10, Duration::from_secs(5)).await;
        ensure!(
            allocations >= 10,
            "5 relayed links need 10 allocations; coturn logged {allocations}"
        );
        for node in nodes {
            node.close().await;
        }
        root.close().await;
        server.stop().await
    })
}
