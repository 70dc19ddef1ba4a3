//! Call a named user: the login, call, answer and hang-up of a calling app, with one
//! overlay per user.
//!
//! - An app backend holds the token key. When Alice logs in it mints her a root token
//!   for the overlay named `alice`, and a join token for the sockets her answers open.
//! - Alice "logs in" by connecting as the root of overlay `alice`, which the server
//!   creates for her (`--dynamic-overlays`).
//! - Bob calls Alice: the backend mints him a join token for `alice`, he joins that
//!   overlay, and Alice answers: they hold a direct data channel.
//! - Bob hangs up (closes the channel); Alice sees the call end. When she logs out, her
//!   overlay is gone.
//!
//! Run it with `cargo run -p webrtc-bootstrap-peer --example call`: it starts its own
//! server on 127.0.0.1 with token auth, as `bootstrap-server --token-key-file KEY
//! --join-auth token --dynamic-overlays` would.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use webrtc_bootstrap_peer::{Client, Message, Options};
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};
use webrtc_bootstrap_server::{AppState, Config, JoinAuth};

/// The app backend's key, shared with the server.
const KEY: &[u8] = b"the calling app's HS256 key, at least 32 bytes";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// The app backend: mints tokens for its users.
struct Backend(TokenKey);

impl Backend {
    fn mint(&self, aud: Audience, callee: &str, user: &str) -> anyhow::Result<String> {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
        let claims = Claims {
            exp,
            aud,
            ovl: callee.to_owned(),
            sub: Some(user.to_owned()),
            nbf: None,
        };
        Ok(self.0.mint(&claims)?)
    }
}

/// Runs the whole call and returns what happened, line by line.
pub(crate) async fn run() -> anyhow::Result<Vec<String>> {
    let mut log = Vec::new();
    // The server, with token auth and dynamic overlays.
    let mut config = Config::new("");
    config.token_key = Some(Arc::new(TokenKey::from_bytes(KEY)?));
    config.join_auth = JoinAuth::Token;
    config.dynamic_overlays = true;
    let state = AppState::new(config)?;
    let stop = state.shutdown_token();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("ws://{}", listener.local_addr()?);
    let serving = tokio::spawn(webrtc_bootstrap_server::serve(
        listener,
        state.clone(),
        stop.clone().cancelled_owned(),
    ));
    let backend = Backend(TokenKey::from_bytes(KEY)?);

    // Alice logs in: the root of the overlay named after her.
    let alice = Client::with_options(
        &server,
        Options::loopback()
            .with_overlay("alice")
            .with_token(backend.mint(Audience::Join, "alice", "alice")?),
    )?;
    let mut line = alice
        .root(&backend.mint(Audience::Root, "alice", "alice")?)
        .await?;
    log.push("alice logged in".to_owned());

    // Bob calls Alice; she answers.
    let bob = Client::with_options(
        &server,
        Options::loopback()
            .with_overlay("alice")
            .with_token(backend.mint(Audience::Join, "alice", "bob")?),
    )?;
    let answer = async {
        let incoming = line.next().await.context("alice's line closed")?;
        anyhow::Ok(incoming.accept().connected().await?)
    };
    let within = Duration::from_secs(20);
    let (bob_call, alice_call) =
        tokio::time::timeout(within, async { tokio::join!(bob.join(), answer) })
            .await
            .context("the call did not connect")?;
    let (mut bob_call, mut alice_call) = (bob_call?, alice_call?);
    log.push("bob called alice: connected".to_owned());

    bob_call.send_text("hi alice").await?;
    if let Some(Message::Text(text)) = alice_call.recv().await {
        log.push(format!("alice heard {text:?}"));
    }
    alice_call.send_text("hi bob").await?;
    if let Some(Message::Text(text)) = bob_call.recv().await {
        log.push(format!("bob heard {text:?}"));
    }

    // Bob hangs up; Alice's side of the call ends.
    bob_call.close().await;
    let ended = tokio::time::timeout(within, alice_call.recv()).await?;
    anyhow::ensure!(ended.is_none(), "alice got {ended:?} after the hang-up");
    log.push("bob hung up: alice's call ended".to_owned());

    // Alice logs out: her overlay is gone once its sockets are.
    drop(line);
    let deadline = tokio::time::Instant::now() + within;
    while state.health().overlays.iter().any(|o| o.name == "alice") {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "overlay alice stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.push("alice logged out: overlay alice removed".to_owned());
    stop.cancel();
    serving.await??;
    Ok(log)
}
