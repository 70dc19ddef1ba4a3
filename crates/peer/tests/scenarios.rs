//! End-to-end scenarios through the real Rust server: concurrency, failures, reconnects,
//! replacement, forwarding raw requests, trickle off, and the exact wire shapes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    Healthz as _, SECRET, echo_root, init_tracing, options, start_server, start_server_at, within,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc_bootstrap_peer::{
    Client, Error, Message, Options, Reconnect, Request, RootStatus, Signal,
};

async fn wait_status(
    status: &mut tokio::sync::watch::Receiver<RootStatus>,
    want: impl Fn(&RootStatus) -> bool,
) -> RootStatus {
    within("root status", async {
        loop {
            let now = status.borrow_and_update().clone();
            if want(&now) {
                return now;
            }
            status.changed().await.expect("status sender alive");
        }
    })
    .await
}

#[tokio::test]
async fn twenty_newcomers_at_once_each_get_their_own_channel() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let root = client.root(SECRET).await.expect("root");
    let answering = echo_root(root);

    let joins = (0..20).map(|i| {
        let client = client.clone();
        async move {
            let mut peer = client.join().await.expect("join");
            let text = format!("newcomer {i}");
            peer.send_text(&text).await.expect("send");
            peer.send_binary(&[i; 3]).await.expect("send");
            let echo = within("echo", peer.recv()).await;
            assert_eq!(echo, Some(Message::Text(text)));
            let echo = within("echo", peer.recv()).await;
            assert_eq!(echo, Some(Message::Binary(vec![i; 3])));
            peer
        }
    });
    let peers = within("20 joins", futures_util::future::join_all(joins)).await;
    let answerers: HashSet<_> = peers.iter().filter_map(|p| p.remote_id()).collect();
    assert_eq!(answerers.len(), 20, "each newcomer has its own answerer");
    server.wait_prospects(0).await;
    drop(peers);
    answering.abort();
}

#[tokio::test]
async fn no_root_gives_the_timeout_error_within_the_timeout() {
    init_tracing();
    let server = start_server().await;
    let timeout = Duration::from_millis(1000);
    let client = Client::with_options(
        &server.base_url(),
        Options {
            timeout,
            ..options()
        },
    )
    .expect("client");
    let start = Instant::now();
    let error = within("join", client.join()).await.expect_err("no root");
    let elapsed = start.elapsed();
    assert_eq!(error, Error::NoAnswer(timeout));
    assert!(error.to_string().contains("no root may be connected"));
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(800),
        "too late: {elapsed:?}"
    );
    // The failed join closed its /join socket too.
    server.wait_prospects(0).await;
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let error = within("root", client.root("not-the-secret"))
        .await
        .expect_err("wrong secret");
    assert!(matches!(error, Error::RootRejected { .. }), "{error:?}");
    assert_eq!(
        client.root("bad/secret").await.err(),
        Some(Error::InvalidSecret)
    );
}

#[tokio::test]
async fn server_not_running_is_unreachable_within_two_seconds() {
    init_tracing();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let client =
        Client::with_options(&format!("ws://127.0.0.1:{port}"), options()).expect("client");
    let start = Instant::now();
    let error = within("join", client.join()).await.expect_err("no server");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let error = within("root", client.root(SECRET))
        .await
        .expect_err("no server");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        Client::new("http://127.0.0.1:1"),
        Err(Error::InvalidAddress { .. })
    ));
}

#[tokio::test]
async fn root_survives_a_server_restart() {
    init_tracing();
    let server = start_server().await;
    let addr = server.addr;
    let client = Client::with_options(
        &server.base_url(),
        Options {
            reconnect: Reconnect {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            ..options()
        },
    )
    .expect("client");
    let root = client.root(SECRET).await.expect("root");
    let mut status = root.status_receiver();
    let answering = echo_root(root);
    server.wait_root(true).await;

    server.stop().await.expect("stop the server");
    let lost = wait_status(&mut status, |s| {
        matches!(s, RootStatus::Reconnecting { .. })
    })
    .await;
    assert!(
        matches!(lost, RootStatus::Reconnecting { attempt: 1.., .. }),
        "{lost:?}"
    );

    // Let a few attempts fail before the server comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = start_server_at(addr).await;
    wait_status(&mut status, |s| *s == RootStatus::Connected).await;
    server.wait_root(true).await;

    let mut peer = within("join after restart", client.join())
        .await
        .expect("join after restart");
    peer.send_text("still there?").await.expect("send");
    assert_eq!(
        within("echo", peer.recv()).await,
        Some(Message::Text("still there?".into()))
    );
    answering.abort();
}

#[tokio::test]
async fn a_replaced_root_is_told_and_stops() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let mut first = client.root(SECRET).await.expect("first root");
    server.wait_root(true).await;
    let second = client.root(SECRET).await.expect("second root");
    let mut status = first.status_receiver();
    wait_status(&mut status, |s| *s == RootStatus::Replaced).await;
    assert!(within("first root ends", first.next()).await.is_none());

    // The second root serves newcomers.
    let answering = echo_root(second);
    let peer = within("join", client.join()).await.expect("join");
    drop(peer);
    answering.abort();
}

/// The tree overlay's path: the root takes the raw requests and hands them to another
/// node (here another client, as in another process), which answers and is fed the
/// newcomer's later requests by hand.
#[tokio::test]
async fn raw_requests_can_be_answered_elsewhere() {
    init_tracing();
    let server = start_server().await;
    let root_client = Client::with_options(&server.base_url(), options()).expect("client");
    let other_node = Client::with_options(&server.base_url(), options()).expect("client");
    let mut root = root_client.root(SECRET).await.expect("root");

    let forwarding = tokio::spawn(async move {
        let incoming = root.next().await.expect("a newcomer");
        let (first, mut later) = incoming.into_parts();
        assert!(first.is_offer());
        // Through JSON, as over a data channel or to another process.
        let first = Request::from_json(&first.to_json()).expect("round trip");
        let answerer = other_node.answer(first);
        let signals = answerer.signal_sender();
        let origin = answerer.origin().to_owned();
        let feeding = tokio::spawn(async move {
            let mut forwarded = 0;
            while let Some(request) = later.next().await {
                assert_eq!(request.origin(), origin);
                signals.signal(request).await.expect("same origin");
                forwarded += 1;
            }
            forwarded
        });
        let peer = answerer.connected().await.expect("answered elsewhere");
        (peer, feeding, root)
    });

    let newcomer = within("join", root_client.join()).await.expect("join");
    let (mut answerer, feeding, root) = within("answer", forwarding).await.expect("task");
    newcomer.send_text("hello").await.expect("send");
    assert_eq!(
        within("recv", answerer.recv()).await,
        Some(Message::Text("hello".into()))
    );
    // The request stream ends when the root stops; the newcomer trickled at least one
    // candidate through the root.
    root.close().await;
    let forwarded = within("feeding ends", feeding).await.expect("feeding");
    assert!(forwarded >= 1, "forwarded {forwarded} later requests");
}

#[tokio::test]
async fn answerer_rejects_other_origins_and_drops_late_signals() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let mut root = client.root(SECRET).await.expect("root");
    let answering = tokio::spawn(async move {
        let incoming = root.next().await.expect("newcomer");
        let first = incoming.request().clone();
        let answerer = client.answer(first.clone());
        let sender = answerer.signal_sender();
        let stranger = Request::new("f".repeat(32), first.signal().clone()).expect("request");
        assert!(matches!(
            answerer.signal(stranger).await,
            Err(Error::WrongOrigin { .. })
        ));
        let peer = answerer.connected().await.expect("connected");
        // After connect, more signals of the same newcomer are dropped quietly.
        sender
            .signal(first.clone())
            .await
            .expect("late signal is fine");
        (peer, incoming)
    });
    let newcomer_client = Client::with_options(&server.base_url(), options()).expect("client");
    let newcomer = within("join", newcomer_client.join()).await.expect("join");
    let (answerer, _incoming) = within("answer", answering).await.expect("task");
    newcomer.send_text("ok").await.expect("send");
    drop((newcomer, answerer));
}

#[tokio::test]
async fn trickle_off_on_both_sides() {
    init_tracing();
    let server = start_server().await;
    let no_trickle = Options {
        trickle: false,
        ..options()
    };
    let client = Client::with_options(&server.base_url(), no_trickle).expect("client");
    let mut root = client.root(SECRET).await.expect("root");
    let answering = tokio::spawn(async move {
        let mut incoming = root.next().await.expect("newcomer");
        let Signal::Description(offer) = incoming.request().signal() else {
            panic!("first request is not an offer");
        };
        assert!(
            offer.sdp.contains("a=candidate:"),
            "offer carries its candidates"
        );
        // Nothing trickles after the offer.
        let later = tokio::time::timeout(Duration::from_millis(200), incoming.next_request()).await;
        assert!(later.is_err(), "unexpected later request: {later:?}");
        incoming.accept().connected().await
    });
    let mut newcomer = within("join", client.join()).await.expect("join");
    let answerer = within("answer", answering)
        .await
        .expect("task")
        .expect("answer");
    answerer.send_binary(b"\x00\x01").await.expect("send");
    assert_eq!(
        within("recv", newcomer.recv()).await,
        Some(Message::Binary(vec![0, 1]))
    );
}

/// What goes on the wire: a raw WebSocket stands in for the root and checks every
/// field of what the Rust newcomer sends, then hands the requests to a Rust answerer.
#[tokio::test]
async fn only_the_three_js_signal_shapes_go_on_the_wire() {
    init_tracing();
    let server = start_server().await;
    let (mut raw_root, _) = tokio_tungstenite::connect_async(format!(
        "{}/{SECRET}/webrtc-bootstrap-root",
        server.base_url()
    ))
    .await
    .expect("raw root");
    server.wait_root(true).await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let mut joining = tokio::spawn({
        let client = client.clone();
        async move { client.join().await }
    });

    let mut answerer = None;
    let mut rank = 0;
    let newcomer = within("join through a raw root", async {
        loop {
            let frame = tokio::select! {
                joined = &mut joining => break joined.expect("task").expect("join"),
                frame = raw_root.next() => frame.expect("open").expect("frame"),
            };
            let WsMessage::Text(text) = frame else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&text).expect("json");
            let object = value.as_object().expect("object");
            let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["destination", "origin", "rank", "signal"], "{text}");
            // The key order JS emits (the server rewrites `origin` in place).
            let at = |key: &str| text.find(&format!("\"{key}\":")).expect("key");
            assert!(at("origin") < at("destination") && at("destination") < at("signal"));
            assert!(text.ends_with(&format!(",\"rank\":{rank}}}")), "{text}");
            assert_eq!(object["destination"], serde_json::Value::Null);
            assert_eq!(object["rank"], rank, "ranks count up from 0");
            rank += 1;
            let signal = object["signal"].as_object().expect("signal object");
            let mut signal_keys: Vec<_> = signal.keys().map(String::as_str).collect();
            signal_keys.sort_unstable();
            if rank == 1 {
                assert_eq!(signal_keys, ["sdp", "type"]);
                assert_eq!(signal["type"], "offer");
            } else {
                assert_eq!(signal_keys, ["candidate"]);
                let candidate = signal["candidate"].as_object().expect("candidate");
                let mut keys: Vec<_> = candidate.keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(keys, ["candidate", "sdpMLineIndex", "sdpMid"]);
                assert_eq!(candidate["sdpMid"], "0");
                assert_eq!(candidate["sdpMLineIndex"], 0);
                let line = candidate["candidate"].as_str().expect("line");
                assert!(
                    line.starts_with("candidate:") && line.contains(" 127.0.0.1 "),
                    "{line}"
                );
            }
            let request = Request::from_json(&text).expect("request");
            match &answerer {
                None => answerer = Some(client.answer(request)),
                Some(a) => a.signal(request).await.expect("same origin"),
            }
        }
    })
    .await;
    assert!(
        rank >= 2,
        "the offer and at least one candidate went to the root"
    );
    let answerer = within("answerer", answerer.expect("answered").connected())
        .await
        .expect("answerer connected");
    assert!(newcomer.remote_id().is_some_and(|id| id.len() == 32));
    assert!(answerer.remote_id().is_some_and(|id| id.len() == 32));
    assert_ne!(newcomer.remote_id(), answerer.remote_id());
    raw_root.send(WsMessage::Close(None)).await.ok();
}

/// IPv4 on one side, IPv6 on the other: the description exchange works but no candidate
/// pair can form, so the error names ICE.
#[tokio::test]
async fn no_candidate_pair_is_an_ice_failure() {
    init_tracing();
    let server = start_server().await;
    let timeout = Duration::from_millis(1500);
    let v6 = Client::with_options(
        &server.base_url(),
        Options {
            timeout,
            udp_addrs: vec!["[::1]:0".parse().expect("addr")],
            ..options()
        },
    )
    .expect("client");
    let mut root = v6.root(SECRET).await.expect("root");
    let answering = tokio::spawn(async move {
        let incoming = root.next().await.expect("newcomer");
        incoming.accept().connected().await
    });
    let v4 = Client::with_options(
        &server.base_url(),
        Options {
            timeout,
            ..options()
        },
    )
    .expect("client");
    let start = Instant::now();
    let error = within("join", v4.join()).await.expect_err("no pair");
    assert_eq!(error, Error::IceFailed);
    assert!(start.elapsed() < timeout + Duration::from_millis(800));
    let answer = within("answer", answering).await.expect("task");
    assert_eq!(answer.err(), Some(Error::IceFailed));
    server.wait_prospects(0).await;
}

/// Answers every newcomer of `root` and greets it with `name`.
fn greeting_root(
    mut root: webrtc_bootstrap_peer::Root,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                if let Ok(peer) = incoming.accept().connected().await {
                    let _ = peer.send_text(name).await;
                    // Keep the channel open until the newcomer goes.
                    let mut peer = peer;
                    while peer.recv().await.is_some() {}
                }
            });
        }
    })
}

/// Which root answered a newcomer of `client`.
async fn answered_by(client: &Client) -> String {
    let mut peer = within("join", client.join()).await.expect("join");
    match within("greeting", peer.recv()).await {
        Some(Message::Text(name)) => name,
        other => panic!("no greeting: {other:?}"),
    }
}

#[tokio::test]
async fn a_standby_root_gets_no_requests_until_the_root_goes_then_takes_over() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let active = client.root(SECRET).await.expect("root");
    let standby = client.standby_root(SECRET).await.expect("standby");
    assert_eq!(standby.status(), RootStatus::Standby);
    let mut standby_status = standby.status_receiver();
    let health = server.healthz().await;
    assert_eq!(health["overlays"][0]["standby_roots"], 1, "{health}");
    let active_task = greeting_root(active, "active");
    let _standby_task = greeting_root(standby, "standby");
    for _ in 0..3 {
        assert_eq!(answered_by(&client).await, "active");
    }
    // The active root goes away (its socket closes): the standby is promoted.
    active_task.abort();
    let _ = active_task.await;
    wait_status(&mut standby_status, |s| *s == RootStatus::Connected).await;
    assert_eq!(answered_by(&client).await, "standby");
    let stats = &server.healthz().await["stats"];
    assert_eq!(
        (
            stats["roots_standby"].as_u64(),
            stats["roots_promoted"].as_u64()
        ),
        (Some(1), Some(1)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_standby_root_with_no_root_is_the_root_at_once_and_a_plain_root_still_replaces_it() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let first = client.standby_root(SECRET).await.expect("standby");
    assert_eq!(
        first.status(),
        RootStatus::Connected,
        "no root: promoted at once"
    );
    within("active", first.active()).await.expect("active");
    let mut status = first.status_receiver();
    let _task = greeting_root(first, "first");
    assert_eq!(answered_by(&client).await, "first");
    // Newest root wins, as for any root: the promoted standby stops as replaced.
    let plain = client.root(SECRET).await.expect("root");
    wait_status(&mut status, |s| *s == RootStatus::Replaced).await;
    let _plain = greeting_root(plain, "plain");
    assert_eq!(answered_by(&client).await, "plain");
}
