//! How the rest of the server reaches one socket's task: its [`SocketHandle`] (the
//! sending half of its bounded outbound queue) and the [`Command`]s that queue carries
//! ahead of any message.
//!
//! The lowest layer of the socket: it knows nothing of the registry, of what messages
//! mean, or of the connection.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval_at};

use std::sync::Arc;

use crate::queue::{self, Budget, Weigh};
use crate::shares::Share;

/// What a socket's task is told through its queue, ahead of any message. Ordered:
/// a pending command is only replaced by a greater one, so a close is never lost to
/// a heartbeat. One byte, in every socket's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Command {
    /// Time for the root's heartbeat and ping.
    Heartbeat,
    /// The server is shutting down: close with 1001.
    Shutdown,
    /// A config reload removed the socket's overlay: close with 1001.
    Removed,
    /// A newer root replaced this one: close with 4000.
    Replaced,
}

impl Command {
    /// Whether the command closes the socket: such a command pre-empts a write that is
    /// waiting for the peer to read.
    pub(crate) fn closes(self) -> bool {
        !matches!(self, Self::Heartbeat)
    }
}

/// A relayed message in a socket's queue, with the share of the root's queue it holds
/// for its sender (root-bound messages only), given back when it leaves the queue.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The message as it goes out.
    pub(crate) text: String,
    /// Its sender's share of the root's queue, held until the message is dropped.
    pub(crate) _share: Option<Share>,
}

/// Messages are equal when their text is; who holds a share of the root's queue is not
/// part of the message.
impl PartialEq for Outgoing {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl From<String> for Outgoing {
    fn from(text: String) -> Self {
        Self { text, _share: None }
    }
}

impl Weigh for Outgoing {
    fn weight(&self) -> usize {
        self.text.len()
    }
}

/// The sending half of a socket's queue: relayed messages and [`Command`]s.
pub(crate) type Outbox = queue::Sender<Outgoing, Command>;

/// The receiving half, read by the socket's task.
pub(crate) type Inbox = queue::Receiver<Outgoing, Command>;

/// How the relay reaches one socket's task: its bounded outbound queue, which also
/// carries the commands the task must act on (close, heartbeat).
#[derive(Debug)]
pub(crate) struct SocketHandle {
    pub(crate) tx: Outbox,
}

/// A socket's queue of at most `capacity` messages and `max_bytes` bytes, whose bytes
/// are also taken from the process-wide `budget`, and its handle.
pub(crate) fn channel(
    capacity: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
) -> (SocketHandle, Inbox) {
    let (tx, rx) = queue::channel(capacity, max_bytes, budget);
    (SocketHandle { tx }, rx)
}

/// Sends the root a [`Command::Heartbeat`] every `period` until its queue closes.
pub(crate) async fn heartbeats(tx: Outbox, period: Duration) {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if tx.control(Command::Heartbeat).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Received;

    #[test]
    fn only_heartbeats_leave_the_socket_open() {
        assert!(!Command::Heartbeat.closes());
        assert!(Command::Shutdown.closes());
        assert!(Command::Replaced.closes());
        // A close is never overwritten by a heartbeat.
        assert!(Command::Shutdown > Command::Heartbeat && Command::Replaced > Command::Heartbeat);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_tick_every_period_and_stop_with_the_queue() {
        let (handle, mut rx) = channel(4, 1024, Arc::new(Budget::new(1024)));
        let task = tokio::spawn(heartbeats(handle.tx.clone(), Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        tokio::task::yield_now().await;
        assert!(
            std::future::poll_fn(|cx| std::task::Poll::Ready(rx.poll_recv(cx)))
                .await
                .is_pending()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(rx.recv().await, Some(Received::Control(Command::Heartbeat)));
        drop(rx);
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("heartbeats stop once the queue is gone")
            .expect("no panic");
    }
}
