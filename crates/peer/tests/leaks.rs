//! Dropping peers leaves nothing behind: 200 joins (a few at a time), plus cancelled
//! joins and abandoned answers, then the process has the same open file descriptors and
//! the runtime the same live tasks as before.
//!
//! One test in its own binary: file descriptors are counted process-wide.

mod common;

use std::time::Duration;

use common::{Healthz as _, SECRET, echo_root, init_tracing, options, start_server, within};
use webrtc_bootstrap_peer::{Client, Message, Options};

const JOINS: usize = 200;
const AT_ONCE: usize = 5;
const CANCELLED: usize = 10;

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_joins_leave_no_sockets_or_tasks_behind() {
    init_tracing();
    let server = start_server().await;
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let answering = echo_root(client.root(SECRET).await.expect("root"));

    // Warm up lazily created state (thread pools, TLS/crypto providers, caches).
    for i in 0..AT_ONCE {
        join_and_talk(&client, i).await;
    }
    // A second server whose root starts answering and gives up at once (drops the
    // answer): joins to it wait for an answer that never comes, and are cancelled there.
    let abandoning = start_server().await;
    let abandoning_client =
        Client::with_options(&abandoning.base_url(), options()).expect("client");
    let mut quitter = abandoning_client.root(SECRET).await.expect("root");
    server.wait_prospects(0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = open_fds();
    let tasks_before = alive_tasks();

    // While connections are open the counts do go up: the measure can see a leak.
    let mut busiest = (0, 0);
    let client = &client;
    for batch in 0..JOINS / AT_ONCE {
        let joins = (0..AT_ONCE).map(|k| async move {
            let mut peer = within("join", client.join()).await.expect("join");
            let text = format!("join {}", batch * AT_ONCE + k);
            peer.send_text(&text).await.expect("send");
            assert_eq!(within("echo", peer.recv()).await, Some(Message::Text(text)));
            (peer, open_fds(), alive_tasks())
        });
        let joined = futures_util::future::join_all(joins).await;
        for (k, (peer, fds, tasks)) in joined.into_iter().enumerate() {
            busiest = (busiest.0.max(fds), busiest.1.max(tasks));
            // Half are closed explicitly, half just dropped.
            if k % 2 == 0 {
                peer.close().await;
            }
        }
    }
    assert!(
        busiest.0 >= fds_before + AT_ONCE,
        "fds while connected: {busiest:?}"
    );
    assert!(
        busiest.1 >= tasks_before + AT_ONCE,
        "tasks while connected: {busiest:?}"
    );

    // Joins cancelled half-way: the future is dropped while it waits for an answer.
    let impatient = Client::with_options(
        &abandoning.base_url(),
        Options {
            timeout: Duration::from_secs(5),
            ..options()
        },
    )
    .expect("client");
    let cancelled =
        (0..CANCELLED).map(|_| tokio::time::timeout(Duration::from_secs(1), impatient.join()));
    // The quitting root starts answering every impatient newcomer, then gives up.
    let quitting = async {
        let mut answers = Vec::new();
        for _ in 0..CANCELLED {
            let incoming = quitter.next().await.expect("an impatient newcomer");
            answers.push(incoming.accept());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(answers);
    };
    let ((), outcomes) = within("cancelled joins", async {
        tokio::join!(quitting, futures_util::future::join_all(cancelled))
    })
    .await;
    for outcome in outcomes {
        // Cancelled (timed out), or failed because the answer was given up.
        assert!(
            !matches!(outcome, Ok(Ok(_))),
            "a join whose answer is given up cannot succeed"
        );
    }
    abandoning.wait_prospects(0).await;

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
