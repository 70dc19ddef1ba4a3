//! Named overlays and token auth with Rust peers through the real Rust server: a
//! newcomer in overlay `a` gets its data channel from root `a` while root `b` never
//! hears of it, with the overlay given in the options or in the address, with join
//! tokens in the query or in the path, refused tokens as typed errors at once, and a
//! root token opening a dynamic overlay.

mod common;

use std::time::{Duration, Instant};

use bootstrap_testkit::tokens::{join_token, key, root_token, token, unix_now};
use common::{TestServer, echo_root, init_tracing, options, within};
use webrtc_bootstrap_peer::{Client, Error, Message, Options, Peer, Root};
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};
use webrtc_bootstrap_server::{Config, Health, JoinAuth, OverlayConfig};

/// How long a refusal (401, 429) may take to come back: no negotiation, no timeout.
const QUICK: Duration = Duration::from_secs(2);

/// How long root `b` is watched for a newcomer that must not come.
const SILENCE: Duration = Duration::from_millis(500);

/// A server with overlays `a` (secret `secret-a`) and `b` (secret `secret-b`) beside
/// the default one, and the token key; `adjust` changes the rest.
async fn two_overlays(adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::with(|c| {
        c.overlays
            .insert("a".into(), OverlayConfig::new("secret-a"));
        c.overlays
            .insert("b".into(), OverlayConfig::new("secret-b"));
        c.token_key = Some(key());
        c.shutdown_grace = Duration::from_secs(2);
        adjust(c);
    })
    .await
    .expect("start the server")
}

/// Waits until the server's health satisfies `check`.
async fn wait_health(server: &TestServer, what: &str, check: impl Fn(&Health) -> bool) {
    within(what, async {
        while !check(&server.health()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Overlay `name` in `health`.
fn overlay<'a>(health: &'a Health, name: &str) -> &'a webrtc_bootstrap_server::OverlayHealth {
    health
        .overlays
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("overlay {name} in {health:?}"))
}

/// A root of the overlay `client` is set up for, connected and seen by the server.
async fn root(server: &TestServer, client: &Client, name: &str, credential: &str) -> Root {
    let root = within("root", client.root(credential))
        .await
        .unwrap_or_else(|e| panic!("root of {name}: {e}"));
    wait_health(server, &format!("root of {name}"), |h| {
        h.overlays
            .iter()
            .any(|o| o.name == name && o.root_connected)
    })
    .await;
    root
}

/// Joins through `client` and checks the data channel with an echo of `text`.
async fn join_and_talk(client: &Client, text: &str) -> Peer {
    let mut peer = within("join", client.join())
        .await
        .unwrap_or_else(|e| panic!("join for {text:?}: {e}"));
    peer.send_text(text).await.expect("send");
    let echo = within("echo", peer.recv()).await;
    assert_eq!(echo, Some(Message::Text(text.to_owned())));
    peer
}

/// Checks that root `b` hears of no newcomer, and that the server relayed nothing and
/// opened no `/join` socket in overlay `b`.
async fn b_heard_nothing(server: &TestServer, root_b: &mut Root) {
    let heard = tokio::time::timeout(SILENCE, root_b.next()).await;
    assert!(heard.is_err(), "root b heard of a newcomer: {heard:?}");
    let health = server.health();
    let b = overlay(&health, "b");
    assert_eq!(b.stats.relayed_to_root, 0, "{b:?}");
    assert_eq!(b.stats.joins, 0, "{b:?}");
}

#[tokio::test]
async fn a_newcomer_in_overlay_a_reaches_root_a_and_root_b_never_hears_of_it() {
    init_tracing();
    let server = two_overlays(|_| {}).await;
    let in_a =
        Client::with_options(&server.base_url(), options().with_overlay("a")).expect("client in a");
    let root_a = root(&server, &in_a, "a", "secret-a").await;
    // Root b names its overlay in the address, as a JS client is given it.
    let in_b = Client::with_options(&server.url("/o/b"), options()).expect("client in b");
    let mut root_b = root(&server, &in_b, "b", "secret-b").await;
    let answering = echo_root(root_a);

    let by_option = join_and_talk(&in_a, "overlay a, by option").await;
    let by_address = Client::with_options(&server.url("/o/a/"), options()).expect("client");
    let by_address = join_and_talk(&by_address, "overlay a, by address").await;
    assert_ne!(by_option.remote_id(), by_address.remote_id());

    b_heard_nothing(&server, &mut root_b).await;
    let health = server.health();
    let a = overlay(&health, "a");
    // Two newcomers and their two answerers opened `/join` in overlay a.
    assert_eq!(a.stats.joins, 4, "{a:?}");
    assert!(a.stats.relayed_to_root >= 2, "{a:?}");
    assert_eq!(overlay(&health, "default").stats.joins, 0);
    answering.abort();
}

#[tokio::test]
async fn join_tokens_work_in_the_query_and_in_the_path() {
    init_tracing();
    let server = two_overlays(|c| c.join_auth = JoinAuth::Token).await;
    // Root a's address carries its join token (its answers need one): the token goes
    // into each `/join` path and stays out of the root path.
    let root_client = Client::with_options(
        &server.url(&format!("/o/a/t/{}", join_token("a"))),
        options(),
    )
    .expect("root client in a");
    let root_a = root(&server, &root_client, "a", "secret-a").await;
    let b_client = Client::with_options(
        &server.base_url(),
        options().with_overlay("b").with_token(join_token("b")),
    )
    .expect("root client in b");
    let mut root_b = root(&server, &b_client, "b", "secret-b").await;
    let answering = echo_root(root_a);

    // The `token` option: `?token=`.
    let by_query = Client::with_options(
        &server.base_url(),
        options().with_overlay("a").with_token(join_token("a")),
    )
    .expect("client");
    let _query = join_and_talk(&by_query, "token in the query").await;
    // A `/o/a/t/TOKEN` prefix and no token option: the path.
    let by_path = Client::with_options(
        &server.url(&format!("/o/a/t/{}", join_token("a"))),
        options(),
    )
    .expect("client");
    let _path = join_and_talk(&by_path, "token in the path").await;
    // The overlay in the options and the token in the address: `/o/a/t/TOKEN/join`.
    let mixed = Client::with_options(
        &server.url(&format!("/t/{}", join_token("a"))),
        options().with_overlay("a"),
    )
    .expect("client");
    let _mixed = join_and_talk(&mixed, "overlay option, token in the path").await;

    b_heard_nothing(&server, &mut root_b).await;
    let health = server.health();
    assert_eq!(health.stats.auth_failures, 0, "{health:?}");
    assert_eq!(overlay(&health, "a").stats.joins, 6);
    answering.abort();
}

#[tokio::test]
async fn missing_or_bad_join_tokens_are_unauthorized_at_once_then_throttled() {
    init_tracing();
    let server = two_overlays(|c| c.join_auth = JoinAuth::Token).await;
    // A root that would answer, so a hang could only come from the client.
    let root_client = Client::with_options(
        &server.base_url(),
        options().with_overlay("a").with_token(join_token("a")),
    )
    .expect("root client");
    let root_a = root(&server, &root_client, "a", "secret-a").await;
    let answering = echo_root(root_a);

    let expired = token(Audience::Join, "a", unix_now() - 3600);
    let cases = [
        ("no token", None),
        ("an expired token", Some(expired)),
        ("a token for overlay b", Some(join_token("b"))),
        ("a root token", Some(root_token("a"))),
        ("a token of another key", Some(other_key_token())),
    ];
    for (what, token) in cases {
        let mut opts = options().with_overlay("a");
        opts.token.clone_from(&token);
        let client = Client::with_options(&server.base_url(), opts).expect("client");
        let started = Instant::now();
        let error = within(what, client.join()).await.expect_err(what);
        assert!(started.elapsed() < QUICK, "{what}: {:?}", started.elapsed());
        let Error::Unauthorized { url } = &error else {
            panic!("{what}: {error:?}");
        };
        assert!(url.contains("/o/a/join"), "{url}");
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("401"), "{shown}");
        if let Some(token) = &token {
            assert!(
                !shown.contains(token.as_str()),
                "{what}: the token leaked: {shown}"
            );
            assert!(url.ends_with("?token=<token>"), "{url}");
        }
    }
    // The same refusal with the token in the path, and the token still hidden.
    let expired = token(Audience::Join, "a", unix_now() - 3600);
    let client =
        Client::with_options(&server.url(&format!("/o/a/t/{expired}")), options()).expect("client");
    let error = within("path token", client.join())
        .await
        .expect_err("expired");
    assert!(
        matches!(&error, Error::Unauthorized { url } if url.ends_with("/o/a/t/<token>/join")),
        "{error:?}"
    );
    assert!(!format!("{error:?}").contains(&expired));

    // The server answers 429 once an address failed ten times in a minute; the root is
    // throttled too, with the time to wait.
    let no_token =
        Client::with_options(&server.base_url(), options().with_overlay("a")).expect("client");
    let mut error = Error::Closed;
    for _ in 0..12 {
        error = within("join", no_token.join()).await.expect_err("refused");
        if !matches!(error, Error::Unauthorized { .. }) {
            break;
        }
    }
    let Error::Throttled { retry_after, .. } = &error else {
        panic!("not throttled: {error:?}");
    };
    assert!(
        retry_after.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(60)),
        "{retry_after:?}"
    );
    assert!(error.to_string().contains("429"), "{error}");
    let error = within("throttled root", root_client.root("wrong-secret"))
        .await
        .expect_err("throttled");
    assert!(matches!(error, Error::Throttled { .. }), "{error:?}");
    answering.abort();
}

/// A well-formed join token for overlay `a` signed with another key.
fn other_key_token() -> String {
    let other = TokenKey::from_bytes(b"another shared key, also 32 bytes or more").expect("key");
    other
        .mint(&Claims {
            exp: unix_now() + 600,
            aud: Audience::Join,
            ovl: "a".to_owned(),
            sub: None,
            nbf: None,
        })
        .expect("mint")
}

#[tokio::test]
async fn a_root_token_opens_a_dynamic_overlay_that_a_newcomer_joins() {
    init_tracing();
    let server = TestServer::with(|c| {
        c.secret = String::new();
        c.token_key = Some(key());
        c.join_auth = JoinAuth::Token;
        c.dynamic_overlays = true;
        c.shutdown_grace = Duration::from_secs(2);
    })
    .await
    .expect("start the server");
    let in_dyn = |token: String| {
        Client::with_options(
            &server.base_url(),
            options().with_overlay("dyn").with_token(token),
        )
        .expect("client in dyn")
    };
    let root_client = in_dyn(join_token("dyn"));
    // Credentials that are no root token of `dyn` are refused, and create nothing.
    for (what, credential) in [
        ("a join token", join_token("dyn")),
        ("a root token of another overlay", root_token("other")),
        (
            "an expired root token",
            token(Audience::Root, "dyn", unix_now() - 3600),
        ),
        ("a secret", "not-a-token".to_owned()),
    ] {
        let error = within(what, root_client.root(&credential))
            .await
            .expect_err(what);
        assert!(
            matches!(&error, Error::Unauthorized { url } if url.ends_with("/o/dyn/<secret>/webrtc-bootstrap-root")),
            "{what}: {error:?}"
        );
        assert!(!format!("{error:?}").contains(&credential));
    }
    assert!(server.health().overlays.iter().all(|o| o.name != "dyn"));

    let root_of_dyn = root_token("dyn");
    let root_dyn = root(&server, &root_client, "dyn", &root_of_dyn).await;
    assert!(overlay(&server.health(), "dyn").dynamic);
    let answering = echo_root(root_dyn);
    let _peer = join_and_talk(&in_dyn(join_token("dyn")), "in a dynamic overlay").await;
    // A join token of the default overlay does not open `/o/dyn/join`.
    let error = within("wrong overlay", in_dyn(join_token("default")).join())
        .await
        .expect_err("refused");
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    answering.abort();
}

#[tokio::test]
async fn bad_overlay_names_and_tokens_are_refused_before_connecting() {
    let address = "ws://127.0.0.1:9";
    for name in ["", "..", "a/b", "a b", &"n".repeat(65)] {
        let error =
            Client::with_options(address, Options::loopback().with_overlay(name)).expect_err(name);
        assert_eq!(
            error,
            Error::InvalidOverlay {
                name: name.to_owned()
            }
        );
    }
    for token in ["", "a b", "a&token=b", "a/b", "a%20b"] {
        let error =
            Client::with_options(address, Options::loopback().with_token(token)).expect_err(token);
        assert_eq!(error, Error::InvalidToken);
    }
    // Two overlays, or two tokens, for one client.
    for (address, options) in [
        (
            "ws://127.0.0.1:9/o/a",
            Options::loopback().with_overlay("b"),
        ),
        ("ws://127.0.0.1:9/t/x", Options::loopback().with_token("y")),
    ] {
        let error = Client::with_options(address, options).expect_err(address);
        assert!(matches!(error, Error::InvalidAddress { .. }), "{error:?}");
    }
    let client =
        Client::with_options(address, Options::loopback().with_token("eyJsecret")).expect("client");
    assert!(!format!("{client:?}").contains("eyJsecret"), "{client:?}");
    let client = Client::new("ws://127.0.0.1:9/o/a/t/eyJsecret").expect("client");
    assert!(!format!("{client:?}").contains("eyJsecret"), "{client:?}");
    // The address stays as given: a tree overlay rebuilds its client from it.
    assert_eq!(client.address(), "ws://127.0.0.1:9/o/a/t/eyJsecret");
}
