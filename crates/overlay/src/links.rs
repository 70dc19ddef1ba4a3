//! The pumps around a node task: one per data channel, and one feeding the bootstrap
//! root's requests in. They only move messages; every decision is the node state's.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};
use webrtc_bootstrap_peer::{
    Error as PeerError, Message, Peer, PeerState, Request, Root, RootStatus,
};

use crate::state::Link;

/// Messages queued for one data channel. A join storm sends a burst of requests down
/// each of the root's links (an offer and candidates per newcomer); a request dropped
/// here is a join lost, so the queue holds a few thousand.
const LINK_QUEUE: usize = 4096;

/// How long a link may stay ICE-disconnected before it is closed.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(3);

/// What the pumps, answers and re-joins tell the node task.
pub(crate) enum Input {
    /// A join request from the bootstrap server (at the root; the parent's arrive as
    /// messages).
    Request(Request),
    /// A candidate's answer finished.
    Answered {
        origin: String,
        result: Result<Peer, PeerError>,
    },
    /// A message on a data channel.
    Message { link: Link, message: Message },
    /// A data channel closed.
    Closed { link: Link },
    /// A re-join finished.
    Rejoined {
        attempt: u32,
        result: Result<Peer, PeerError>,
    },
    /// The bootstrap root, a standby, was promoted.
    Promoted,
    /// The bootstrap root stopped for good.
    RootStopped(String),
}

/// Queues a message on a link without waiting; a full link drops it with a warning.
pub(crate) fn queue(tx: &mpsc::Sender<String>, text: String) {
    if tx.try_send(text).is_err() {
        warn!("link queue full or closed; message dropped");
    }
}

/// Starts the pump of one data channel; dropping the returned sender closes it.
pub(crate) fn spawn_link(
    mut peer: Peer,
    link: Link,
    inputs: mpsc::Sender<Input>,
) -> mpsc::Sender<String> {
    let (tx, mut outbound) = mpsc::channel::<String>(LINK_QUEUE);
    let mut state = peer.state_receiver();
    tokio::spawn(async move {
        // Set while ICE reports the remote as disconnected: a peer that crashed never
        // closes its channel, so a link that stays disconnected is given up (simple-peer
        // destroys the connection at the first `disconnected`).
        let mut lost_since: Option<Instant> = None;
        loop {
            let give_up = lost_since.map(|since| since + DISCONNECTED_GRACE);
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *state.borrow_and_update();
                    match now {
                        PeerState::Disconnected => {
                            lost_since.get_or_insert_with(Instant::now);
                        }
                        PeerState::Connected => lost_since = None,
                        PeerState::Closed(_) => break,
                    }
                }
                () = sleep_until(give_up.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if give_up.is_some() => {
                    debug!(?link, "link disconnected for too long; closing it");
                    break;
                }
                text = outbound.recv() => match text {
                    Some(text) => {
                        if let Err(error) = peer.send_text(&text).await {
                            debug!(?link, %error, "send failed");
                            break;
                        }
                    }
                    None => break,
                },
                message = peer.recv() => match message {
                    Some(message) => {
                        if inputs.send(Input::Message { link: link.clone(), message }).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        peer.close().await;
        let _ = inputs.send(Input::Closed { link }).await;
    });
    tx
}

/// Pipes every request the bootstrap root receives into the node task. A newcomer's
/// later requests are piped for `lifetime` at most: by then its own join has timed out.
pub(crate) async fn feed_root(mut root: Root, inputs: mpsc::Sender<Input>, lifetime: Duration) {
    let mut pipes = Vec::new();
    let mut status = root.status_receiver();
    let mut standby = *status.borrow_and_update() == RootStatus::Standby;
    let mut watching = true;
    loop {
        let incoming = tokio::select! {
            incoming = root.next() => incoming,
            changed = status.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let now = status.borrow_and_update().clone();
                if now == RootStatus::Standby {
                    standby = true;
                } else if now == RootStatus::Connected
                    && std::mem::replace(&mut standby, false)
                    && inputs.send(Input::Promoted).await.is_err()
                {
                    return;
                }
                continue;
            }
        };
        let Some(incoming) = incoming else { break };
        let (first, mut later) = incoming.into_parts();
        if inputs.send(Input::Request(first)).await.is_err() {
            return;
        }
        let inputs = inputs.clone();
        pipes.retain(|pipe: &JoinHandle<()>| !pipe.is_finished());
        pipes.push(tokio::spawn(async move {
            let pipe = async {
                while let Some(request) = later.next().await {
                    if inputs.send(Input::Request(request)).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(lifetime, pipe).await;
        }));
    }
    let _ = inputs
        .send(Input::RootStopped(format!("{:?}", root.status())))
        .await;
    for pipe in pipes {
        pipe.abort();
    }
}
