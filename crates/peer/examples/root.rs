//! A root that answers every newcomer itself and echoes what it receives.
//!
//! Run with (against a running server, e.g. `bootstrap-server --secret s3cret-s3cret-s3cret`):
//! ```text
//! cargo run -p webrtc-bootstrap-peer --example root -- ws://127.0.0.1:5000 s3cret-s3cret-s3cret
//! ```
//! then start one or more `newcomer` examples. On `127.0.0.1`/`localhost` the peers bind
//! the loopback interface only. `RUST_LOG=debug` shows the signaling.

use webrtc_bootstrap_peer::{Client, Message, Options, RootStatus};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:5000".to_owned());
    let secret = args
        .next()
        .unwrap_or_else(|| "s3cret-s3cret-s3cret".to_owned());
    let options = if address.contains("127.0.0.1") || address.contains("localhost") {
        Options::loopback()
    } else {
        Options::default()
    };

    let client = Client::with_options(&address, options)?;
    let mut root = client.root(&secret).await?;
    println!("root connected to {address}; waiting for newcomers");

    // Report reconnects and replacement.
    let mut status = root.status_receiver();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            println!("root status: {now:?}");
            if matches!(now, RootStatus::Replaced | RootStatus::Rejected(_)) {
                return;
            }
        }
    });

    while let Some(incoming) = root.next().await {
        let origin = incoming.origin().to_owned();
        println!("newcomer {origin}: answering");
        tokio::spawn(async move {
            let mut peer = match incoming.accept().connected().await {
                Ok(peer) => peer,
                Err(error) => {
                    println!("newcomer {origin}: {error}");
                    return;
                }
            };
            println!("newcomer {origin}: connected");
            while let Some(message) = peer.recv().await {
                if let Message::Text(text) = &message {
                    println!("newcomer {origin} says {text:?}");
                }
                if let Err(error) = peer.send(&message).await {
                    println!("newcomer {origin}: {error}");
                    break;
                }
            }
            println!("newcomer {origin}: closed ({:?})", peer.closed().await);
        });
    }
    println!("root stopped: {:?}", root.status());
    Ok(())
}
