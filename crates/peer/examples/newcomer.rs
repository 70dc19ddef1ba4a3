//! A newcomer: joins through the server, sends a few messages over the data channel and
//! prints the echoes of the `root` example.
//!
//! Run with:
//! ```text
//! cargo run -p webrtc-bootstrap-peer --example newcomer -- ws://127.0.0.1:5000
//! ```

use std::time::Instant;

use webrtc_bootstrap_peer::{Client, Message, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:5000".to_owned());
    let options = if address.contains("127.0.0.1") || address.contains("localhost") {
        Options::loopback()
    } else {
        Options::default()
    };

    let client = Client::with_options(&address, options)?;
    let start = Instant::now();
    let mut peer = client.join().await?;
    println!(
        "connected to answerer {} in {:.0?}",
        peer.remote_id().unwrap_or("?"),
        start.elapsed()
    );

    for i in 0..3 {
        peer.send_text(&format!("hello #{i}")).await?;
        match peer.recv().await {
            Some(Message::Text(text)) => println!("echo: {text}"),
            Some(Message::Binary(data)) => println!("echo: {} bytes", data.len()),
            None => anyhow::bail!("the root closed the connection"),
        }
    }
    peer.send_binary(&[1, 2, 3]).await?;
    if let Some(Message::Binary(data)) = peer.recv().await {
        println!("binary echo: {data:?}");
    }
    peer.close().await;
    Ok(())
}
