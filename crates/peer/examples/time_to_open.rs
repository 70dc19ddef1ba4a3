//! Measures the time from `Client::join` to an open data channel between two Rust peers
//! on loopback, through an in-process Rust server.
//!
//! Run with:
//! ```text
//! cargo run --release -p webrtc-bootstrap-peer --example time_to_open -- 20 [CHECK_MS]
//! ```
//! The optional second argument sets `Options::ice_check_interval` in milliseconds
//! (default 50; the `webrtc` crate's own default is 200).
//! (`RUST_LOG=debug` shows where the time goes.)

use std::time::{Duration, Instant};

use webrtc_bootstrap_peer::{Client, Options};

const SECRET: &str = "time-to-open";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    let check_interval = std::env::args()
        .nth(2)
        .map(|n| n.parse().map(Duration::from_millis))
        .transpose()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("ws://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webrtc_bootstrap_server::run(
        listener,
        webrtc_bootstrap_server::Config::new(SECRET),
        async {
            let _ = stopped.await;
        },
    ));

    let client = Client::with_options(
        &address,
        Options {
            timeout: Duration::from_secs(10),
            ice_check_interval: check_interval.unwrap_or(Options::default().ice_check_interval),
            ..Options::loopback()
        },
    )?;
    let mut root = client.root(SECRET).await?;
    let answering = tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                if let Ok(peer) = incoming.accept().connected().await {
                    // Keep it until the newcomer closes.
                    let _ = peer.closed().await;
                }
            });
        }
    });

    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let start = Instant::now();
        let peer = client.join().await?;
        let elapsed = start.elapsed();
        println!("run {run:2}: {:7.1} ms", elapsed.as_secs_f64() * 1e3);
        times.push(elapsed);
        peer.close().await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "time to open over {runs} runs: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(times[0]),
        ms(times[runs / 2]),
        ms(times[runs - 1])
    );

    answering.abort();
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}
