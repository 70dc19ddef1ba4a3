//! Unchanged JS 4.4.1 peers (webrtc-bootstrap, @roamhq/wrtc) in named overlays and with
//! tokens, against our server, with real WebRTC. The JS client builds its URLs as
//! `host + '/join'` and `host + '/' + secret + '/webrtc-bootstrap-root'`, so it is given
//! the host `127.0.0.1:PORT/o/NAME` to reach overlay `NAME`, `…/o/NAME/t/TOKEN` to carry a
//! join token, and a root token in place of its secret (docs/server.md#overlays-and-tokens):
//!
//! 1. a JS root and a JS newcomer in overlay `a` connect and talk, while a JS newcomer in
//!    overlay `b` (configured, no root) times out as the JS client does without a root;
//! 2. with join tokens required, a JS newcomer with a token in its path connects to a JS
//!    root (whose answers carry a token the same way); a token of another overlay and no
//!    token are refused with 401;
//! 3. a JS root presents a root token instead of the secret, and a JS newcomer reaches
//!    it; a root token of another overlay and a join token are refused with 401.
//!
//! Each scenario re-runs itself inside a fresh network namespace with only loopback, as
//! `tests/interop.rs` does. The JS side is `tests/interop/harness.js` (`npm ci` there
//! first; `.ci/run` does it).

mod js;

use js::{Js, scenario};

use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::TestServer;
use bootstrap_testkit::tokens::{self, join_token, root_token};
use webrtc_bootstrap_server::{Config, Health, JoinAuth, OverlayConfig, OverlayHealth};

const SECRET_A: &str = "interop-secret-a";
const SECRET_B: &str = "interop-secret-b";
use js::WAIT;
/// The JS client's timeout for newcomers that must fail: short, so the test is too.
const SHORT_TIMEOUT: &str = "2000";

/// Our server with overlays `a` and `b` beside the default one; `adjust` changes the rest.
async fn server(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<TestServer> {
    TestServer::with(|c| {
        c.overlays.insert("a".into(), OverlayConfig::new(SECRET_A));
        c.overlays.insert("b".into(), OverlayConfig::new(SECRET_B));
        adjust(c);
    })
    .await
}

/// A server whose key signs this test's tokens.
async fn server_with_tokens(join_auth: JoinAuth) -> anyhow::Result<TestServer> {
    server(|c| {
        c.token_key = Some(tokens::key());
        c.join_auth = join_auth;
    })
    .await
}

fn overlay<'a>(health: &'a Health, name: &str) -> anyhow::Result<&'a OverlayHealth> {
    health
        .overlays
        .iter()
        .find(|o| o.name == name)
        .with_context(|| format!("no overlay {name} in {health:?}"))
}

/// Waits until overlay `name` has a root (the server is the only one who can tell: the
/// JS root's `ready` comes when its socket opens, before the server registered it).
async fn wait_for_root(server: &TestServer, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !overlay(&server.health(), name)?.root_connected {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no root in overlay {name} in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A JS root with these harness arguments, connected.
async fn js_root(server: &TestServer, overlay_name: &str, args: &[&str]) -> anyhow::Result<Js> {
    let mut root = Js::spawn("root", "js-root", args)?;
    root.expect_event("ready").await?;
    wait_for_root(server, overlay_name).await?;
    Ok(root)
}

/// A JS newcomer at `url` that connects to the JS `root`, and data both ways.
async fn newcomer_talks_to(root: &mut Js, url: &str) -> anyhow::Result<Js> {
    let mut newcomer = Js::spawn("newcomer", "js-newcomer", &["--url", url])?;
    newcomer.expect_event("connected").await?;
    root.expect_event("connected").await?;
    newcomer.expect_data("hello from the js root").await?;
    root.expect_data("hello from the js newcomer").await?;
    newcomer.send("ping").await?;
    root.expect_data("ping").await?;
    root.send("pong").await?;
    newcomer.expect_data("pong").await?;
    Ok(newcomer)
}

/// Starts a JS peer (`role`, `args`) whose socket the server must refuse with 401, and
/// checks it: the JS client reports only `connection error to <url>` (simple-websocket
/// hides the status), so the server's count of refused tokens tells the 401 apart from
/// a 404.
async fn expect_unauthorized(
    server: &TestServer,
    role: &str,
    name: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let before = server.health().stats.auth_failures;
    let mut js = Js::spawn(role, name, args)?;
    let error = js.expect_event("error").await?;
    ensure!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("connection error")),
        "{name}: expected a connection error, got {error}"
    );
    let after = server.health().stats.auth_failures;
    ensure!(
        after == before + 1,
        "{name}: the server should have refused one token (401), counted {before} then {after}"
    );
    js.expect_no_uncaught(Duration::from_millis(200)).await
}

#[test]
fn o1_js_peers_in_overlay_a_while_b_has_no_root() -> anyhow::Result<()> {
    scenario(
        "o1_js_peers_in_overlay_a_while_b_has_no_root",
        "1 JS root and newcomer in overlay a (host/o/a); a newcomer in b, without root, times out",
        async || {
            let server = server(|_| {}).await?;
            let host = server.host();
            let in_a = format!("{host}/o/a");
            let in_b = format!("{host}/o/b");
            let mut root = js_root(&server, "a", &["--url", &in_a, "--secret", SECRET_A]).await?;
            let mut newcomer = newcomer_talks_to(&mut root, &in_a).await?;

            let mut lonely = Js::spawn(
                "newcomer",
                "js-lonely",
                &["--url", &in_b, "--timeout", SHORT_TIMEOUT],
            )?;
            let error = lonely.expect_event("error").await?;
            ensure!(
                error["message"] == "Bootstrap timeout",
                "unexpected error {error}"
            );
            lonely
                .expect_no_uncaught(Duration::from_millis(500))
                .await?;
            newcomer.expect_no_uncaught(Duration::ZERO).await?;
            root.expect_no_uncaught(Duration::ZERO).await?;

            // The root of `a` heard only its own newcomer; `b`'s offers had nowhere to go.
            ensure!(
                root.count("request") == 1,
                "the root of a got requests of another overlay: {:?}",
                root.seen
            );
            let health = server.health();
            let (a, b) = (overlay(&health, "a")?, overlay(&health, "b")?);
            let default = overlay(&health, "default")?;
            ensure!(
                a.stats.joins == 2,
                "a: the newcomer and the root's answer, got {:?}",
                a.stats
            );
            ensure!(
                b.stats.joins == 1 && b.stats.dropped_no_root > 0 && !b.root_connected,
                "b: one newcomer whose signals were dropped, got {b:?}"
            );
            ensure!(
                default.stats.joins == 0 && !default.root_connected,
                "the default overlay saw a socket: {default:?}"
            );
            Ok(())
        },
    )
}

#[test]
fn o2_js_newcomer_with_a_join_token_in_the_path() -> anyhow::Result<()> {
    scenario(
        "o2_js_newcomer_with_a_join_token_in_the_path",
        "2 join tokens required: a JS newcomer with host/o/a/t/TOKEN; wrong and missing tokens get 401",
        async || {
            let server = server_with_tokens(JoinAuth::Token).await?;
            let host = server.host();
            let in_a = format!("{host}/o/a");
            let with_token = format!("{in_a}/t/{}", join_token("a"));
            // The root's own socket takes the secret; its answers are /join sockets, and
            // carry the join token in their host the same way.
            let mut root = js_root(
                &server,
                "a",
                &[
                    "--url",
                    &in_a,
                    "--secret",
                    SECRET_A,
                    "--join-url",
                    &with_token,
                ],
            )
            .await?;
            let mut newcomer = newcomer_talks_to(&mut root, &with_token).await?;
            newcomer.expect_no_uncaught(Duration::ZERO).await?;

            let of_b = format!("{in_a}/t/{}", join_token("b"));
            for (name, url) in [("js-token-of-b", of_b.as_str()), ("js-no-token", &in_a)] {
                let args = ["--url", url, "--timeout", SHORT_TIMEOUT];
                expect_unauthorized(&server, "newcomer", name, &args).await?;
            }
            ensure!(
                root.count("request") == 1,
                "the root heard a refused newcomer: {:?}",
                root.seen
            );
            Ok(())
        },
    )
}

#[test]
fn o3_js_root_presents_a_root_token() -> anyhow::Result<()> {
    scenario(
        "o3_js_root_presents_a_root_token",
        "3 a JS root with client.root(rootToken) in overlay a; wrong tokens get 401",
        async || {
            let server = server_with_tokens(JoinAuth::Open).await?;
            let in_a = format!("{}/o/a", server.host());
            let root_of_a = root_token("a");
            let mut root = js_root(&server, "a", &["--url", &in_a, "--secret", &root_of_a]).await?;
            let mut newcomer = newcomer_talks_to(&mut root, &in_a).await?;
            newcomer.expect_no_uncaught(Duration::ZERO).await?;

            // A root token of another overlay, and a join token, are no root credentials.
            for (name, credential) in [
                ("js-root-of-b", root_token("b")),
                ("js-join-token", join_token("a")),
            ] {
                let args = ["--url", in_a.as_str(), "--secret", &credential];
                expect_unauthorized(&server, "root", name, &args).await?;
            }
            // The refusals left the root in place.
            ensure!(
                overlay(&server.health(), "a")?.root_connected,
                "the root of a is gone"
            );
            root.expect_no_uncaught(Duration::ZERO).await
        },
    )
}
