//! The `bootstrap-node` binary in named overlays on a server that requires join tokens:
//! a root and nodes of overlay `a` (the tokens given as `@FILE`, in the environment and
//! in argv) exchange lines over real data channels while overlay `b` sees nothing; a
//! root token opens a dynamic overlay; a missing token or a bad command line fails fast
//! with a message that names the problem and never the token.

use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::tokens::{join_token, key, root_token};
use bootstrap_testkit::{Proc, TestServer};
use tokio::process::Command;
use webrtc_bootstrap_server::{Config, Health, JoinAuth, OverlayConfig};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");

/// How long a node that must fail may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// A server with token auth on every `/join` socket and overlays `a` and `b`; `adjust`
/// changes the rest.
async fn server(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<TestServer> {
    TestServer::with(|c| {
        c.overlays
            .insert("a".into(), OverlayConfig::new("secret-a"));
        c.overlays
            .insert("b".into(), OverlayConfig::new("secret-b"));
        c.token_key = Some(key());
        c.join_auth = JoinAuth::Token;
        adjust(c);
    })
    .await
}

/// A file in the temporary directory holding a token (with a trailing newline, as
/// `bootstrap-server token > FILE` writes it), removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "bootstrap-node-token-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, format!("{token}\n"))?;
        Ok(Self(path))
    }

    /// `@PATH`, as `--token` takes it.
    fn arg(&self) -> String {
        format!("@{}", self.0.display())
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `bootstrap-node ARGS` named `name`, WebRTC on loopback, and no token in the
/// environment unless `env` sets one.
fn command(name: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args([
            "--name",
            name,
            "--timeout",
            "20000",
            "--udp-bind",
            "127.0.0.1:0",
        ])
        .env_remove("SECRET")
        .env_remove("BOOTSTRAP_TOKEN")
        .env_remove("BOOTSTRAP_JOIN_TOKEN")
        .env_remove("BOOTSTRAP_OVERLAY")
        .envs(env.iter().copied());
    command
}

fn node(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
    Proc::spawn(name, &mut command(name, args, env))
}

/// Runs a node that must fail, and returns its output.
async fn failing(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = command(name, args, env);
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(EXIT_WAIT, command.output())
        .await
        .with_context(|| format!("{name} did not exit within {EXIT_WAIT:?}"))??;
    ensure!(!output.status.success(), "{name} succeeded: {output:?}");
    Ok(output)
}

/// Waits until the server's health satisfies `check`.
async fn wait_health(
    server: &TestServer,
    what: &str,
    check: impl Fn(&Health) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check(&server.health()) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            server.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_and_nodes_of_overlay_a_talk_with_join_tokens() -> anyhow::Result<()> {
    let server = server(|_| {}).await?;
    let url = server.base_url();
    // The root answers newcomers on /join sockets of its own: it needs a join token too.
    let root_join = TokenFile::new(&join_token("a"))?;
    let mut root = node(
        "root",
        &[
            "root",
            "--url",
            &url,
            "--overlay",
            "a",
            "--secret",
            "secret-a",
            "--join-token",
            &root_join.arg(),
            "--max-degree",
            "1",
        ],
        &[],
    )?;
    root.expect("ready root as root").await?;
    // Three nodes, each with its join token another way: a file, the environment, and
    // the address (as JS clients take it).
    let file = TokenFile::new(&join_token("a"))?;
    let mut j1 = node(
        "j1",
        &[
            "join",
            "--url",
            &url,
            "--overlay",
            "a",
            "--token",
            &file.arg(),
        ],
        &[],
    )?;
    j1.expect("ready node as j1").await?;
    let env_token = join_token("a");
    let mut j2 = node(
        "j2",
        &["join", "--url", &url, "--overlay", "a"],
        &[("BOOTSTRAP_TOKEN", &env_token)],
    )?;
    j2.expect("ready node as j2").await?;
    let in_url = format!("{url}/o/a/t/{}", join_token("a"));
    let mut j3 = node("j3", &["join", "--url", &in_url], &[])?;
    j3.expect("ready node as j3").await?;
    // The answering side registers its child a moment after the newcomer's channel opens.
    tokio::time::sleep(Duration::from_millis(500)).await;

    j3.type_line("hello from j3").await?;
    for proc in [&mut root, &mut j1, &mut j2] {
        proc.expect("<j3> hello from j3").await?;
    }
    root.type_line("and from the root of a").await?;
    for proc in [&mut j1, &mut j2, &mut j3] {
        proc.expect("<root> and from the root of a").await?;
    }

    let health = server.health();
    let b = health
        .overlays
        .iter()
        .find(|o| o.name == "b")
        .context("overlay b")?;
    ensure!(b.stats.joins == 0 && b.stats.relayed_to_root == 0, "{b:?}");
    ensure!(health.stats.auth_failures == 0, "{health:?}");
    for proc in [&mut root, &mut j1, &mut j2, &mut j3] {
        proc.type_line("/quit").await?;
    }
    for proc in [&mut root, &mut j1, &mut j2, &mut j3] {
        proc.exit_ok().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_token_opens_a_dynamic_overlay_for_the_nodes() -> anyhow::Result<()> {
    let server = server(|c| c.dynamic_overlays = true).await?;
    let url = server.base_url();
    let root_of_dyn = root_token("dyn");
    let root_join = TokenFile::new(&join_token("dyn"))?;
    let mut root = node(
        "root",
        &[
            "root",
            "--url",
            &url,
            "--overlay",
            "dyn",
            "--join-token",
            &root_join.arg(),
        ],
        &[("BOOTSTRAP_TOKEN", &root_of_dyn)],
    )?;
    root.expect("ready root as root").await?;
    wait_health(&server, "the dynamic overlay's root", |h| {
        h.overlays
            .iter()
            .any(|o| o.name == "dyn" && o.dynamic && o.root_connected)
    })
    .await?;
    let join_dyn = join_token("dyn");
    let mut a = node(
        "a",
        &[
            "join",
            "--url",
            &url,
            "--overlay",
            "dyn",
            "--token",
            &join_dyn,
        ],
        &[],
    )?;
    a.expect("ready node as a").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.type_line("in a dynamic overlay").await?;
    root.expect("<a> in a dynamic overlay").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_and_bad_flags_fail_fast_without_showing_the_token() -> anyhow::Result<()> {
    let server = server(|_| {}).await?;
    let url = server.base_url();

    // No token: the server answers 401 and the node says so.
    let output = failing("j", &["join", "--url", &url, "--overlay", "a"], &[]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("HTTP 401"), "{stderr}");

    // A token for another overlay: refused, and not repeated.
    let wrong = join_token("b");
    let output = failing(
        "j",
        &["join", "--url", &url, "--overlay", "a"],
        &[("BOOTSTRAP_TOKEN", &wrong)],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("HTTP 401") && !stderr.contains(&wrong),
        "{stderr}"
    );

    // A root with a join token in place of its root token.
    let output = failing(
        "r",
        &["root", "--url", &url, "--overlay", "a", "--token", &wrong],
        &[],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("cannot become the root") && !stderr.contains(&wrong),
        "{stderr}"
    );

    // Bad command lines, refused before connecting, with exit code 64.
    for (args, env, says) in [
        (
            &["root", "--url", &url, "--overlay", "a"][..],
            &[][..],
            "needs its secret",
        ),
        (
            &["root", "--url", &url, "--secret", "s", "--token", "t"][..],
            &[][..],
            "not both",
        ),
        (
            &["join", "--url", &url, "--token", "@/nonexistent/token-file"][..],
            &[][..],
            "cannot read the join token file",
        ),
        (
            &["join", "--url", &url, "--overlay", "a/b"][..],
            &[][..],
            "invalid overlay name",
        ),
        (
            &["join", "--url", &url],
            &[("BOOTSTRAP_TOKEN", "not a token")][..],
            "URL-safe",
        ),
    ] {
        let output = failing("bad", args, env).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains(says), "{args:?}: {stderr}");
        // EX_USAGE, as bootstrap-server exits on bad configuration.
        ensure!(
            output.status.code() == Some(64),
            "{args:?}: {:?}",
            output.status
        );
    }
    Ok(())
}
