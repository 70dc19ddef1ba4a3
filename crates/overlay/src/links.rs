//! The pumps around a node task: one per data channel, and one feeding the bootstrap
//! root's requests in. They only move messages; every decision is the node task's.

use std::time::Duration;

use bootstrap_peer::{Error as PeerError, Message, Peer, Request, Root};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Messages queued for one data channel.
const LINK_QUEUE: usize = 256;

/// Which link an input is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// The parent, by generation (a re-join starts a new one).
    Parent(u64),
    Child(String),
}

pub(crate) enum Input {
    /// A join request from the bootstrap server (root) or the parent.
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
    tokio::spawn(async move {
        loop {
            tokio::select! {
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
    while let Some(incoming) = root.next().await {
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
