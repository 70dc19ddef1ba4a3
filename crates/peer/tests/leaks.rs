//! Dropping peers leaves nothing behind: 200 joins (a few at a time), plus cancelled
//! joins and abandoned answers, then the process has the same open file descriptors and
//! the runtime the same live tasks as before.
//!
//! One test in its own binary: file descriptors are counted process-wide.

mod common;

use std::time::Duration;

use common::{SECRET, TestServer, init_tracing, options, within};
use webrtc_bootstrap_peer::{Client, Message, Options};

const JOINS: usize = 200;
const AT_ONCE: usize = 5;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (up to 10 s) until `measure` comes back down to `baseline`; returns the last value.
async fn settle(baseline: usize, measure: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = measure();
        if now <= baseline || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn join_and_talk(client: &Client, i: usize) {
    let mut peer = within("join", client.join()).await.expect("join");
    let text = format!("join {i}");
    peer.send_text(&text).await.expect("send");
    assert_eq!(within("echo", peer.recv()).await, Some(Message::Text(text)));
    // Half are closed explicitly, half just dropped.
    if i % 2 == 0 {
        peer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_joins_leave_no_sockets_or_tasks_behind() {
    init_tracing();
    let server = TestServer::start().await;
    let client = Client::with_options(&server.url(), options()).expect("client");
    let mut root = client.root(SECRET).await.expect("root");
    let answering = tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                let Ok(mut peer) = incoming.accept().connected().await else {
                    return;
                };
                while let Some(message) = peer.recv().await {
                    if peer.send(&message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    // Warm up lazily created state (thread pools, TLS/crypto providers, caches).
    for i in 0..AT_ONCE {
        join_and_talk(&client, i).await;
    }
    server.wait_prospects(0).await;
    let fds_before = settle(0, open_fds).await;
    let tasks_before = settle(0, alive_tasks).await;

    for batch in 0..JOINS / AT_ONCE {
        let joins = (0..AT_ONCE).map(|k| join_and_talk(&client, batch * AT_ONCE + k));
        futures_util::future::join_all(joins).await;
    }

    // Joins cancelled half-way (the future dropped) and answers given up.
    let impatient = Client::with_options(
        &server.url(),
        Options {
            timeout: Duration::from_secs(5),
            ..options()
        },
    )
    .expect("client");
    for _ in 0..10 {
        let _ = tokio::time::timeout(Duration::from_millis(5), impatient.join()).await;
    }

    server.wait_prospects(0).await;
    let fds_after = settle(fds_before, open_fds).await;
    let tasks_after = settle(tasks_before, alive_tasks).await;
    assert_eq!(
        fds_after, fds_before,
        "open file descriptors before and after {JOINS} joins"
    );
    assert_eq!(
        tasks_after, tasks_before,
        "live tasks before and after {JOINS} joins"
    );
    answering.abort();
}
