//! [`Node`]: the handle on one running tree node, and [`NodeInfo`], a snapshot of its
//! links.
//!
//! The node runs in its own task (the `task` module). The handle sends it commands,
//! reads its [`Event`]s and watches its [`NodeInfo`].

use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use webrtc_bootstrap_peer::Client;

use crate::error::Error;
use crate::event::Event;
use crate::liveness::HEARTBEAT_LABEL;
use crate::options::NodeOptions;
use crate::state::Target;
use crate::task::{self, Start};
use crate::wire::{self, BROADCAST_KEY, TO_ROOT_KEY};

/// Events the application has not read yet; past this they are dropped (with a warning)
/// rather than stalling the tree.
const EVENT_QUEUE: usize = 4096;
/// Commands queued for the node task.
const COMMAND_QUEUE: usize = 64;
/// How long [`Node::close`] waits for the task, twice: to close the links, then to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A running tree node. Dropping it closes the node and every link.
#[derive(Debug)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    info: watch::Receiver<NodeInfo>,
    task: Option<JoinHandle<()>>,
}

/// A snapshot of the node's links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// This node's name (see [`NodeOptions::name`]).
    pub name: String,
    /// Whether this node is the root (a standby root too).
    pub is_root: bool,
    /// Whether this root waits as a standby root ([`Node::standby_root`]) and has not
    /// been promoted yet.
    pub standby: bool,
    /// The parent's `/join` id, when connected (`Some("")` if it is unknown).
    pub parent: Option<String>,
    /// The children's ids, by slot order.
    pub children: Vec<String>,
    /// Newcomers being answered.
    pub candidates: usize,
    /// Requests waiting for a child slot.
    pub stored: usize,
}

/// What the handle asks of the node task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a `DATA` message, and reply whether the target is connected.
    Send {
        to: Target,
        text: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Close every link and stop; reply once done.
    Close(oneshot::Sender<()>),
}

impl Node {
    /// Becomes the root of the tree: connects to the bootstrap server with `secret` and
    /// answers or delegates every join request.
    ///
    /// # Errors
    /// The peer library's error when the root socket cannot be opened.
    pub async fn root(client: Client, secret: &str, options: NodeOptions) -> Result<Self, Error> {
        let root = client.root(secret).await?;
        Ok(Self::start(client, options, Start::Root(root)))
    }

    /// Waits as a standby root of the tree: connects to the bootstrap server with
    /// `secret` as a standby root ([`Client::standby_root`]), which gets no join
    /// requests while another root is active. When that root's socket closes or misses
    /// its pings, the server promotes this one ([`Event::Promoted`]) and the orphaned
    /// subtrees re-join under it. With no root active it is the root at once
    /// ([`NodeInfo::standby`] false).
    ///
    /// # Errors
    /// The peer library's error when the root socket cannot be opened, or when the
    /// server does not support standby roots.
    pub async fn standby_root(
        client: Client,
        secret: &str,
        options: NodeOptions,
    ) -> Result<Self, Error> {
        let root = client.standby_root(secret).await?;
        Ok(Self::start(client, options, Start::Root(root)))
    }

    /// Joins the tree through the bootstrap server; returns once the parent is connected.
    ///
    /// # Errors
    /// The peer library's error when the join fails (timeout, no root, ICE failure…).
    pub async fn join(client: Client, options: NodeOptions) -> Result<Self, Error> {
        let parent = if options.heartbeat_interval.is_some() {
            // Tell the parent this node supports heartbeats.
            let mut peer_options = client.options().clone();
            peer_options.channel_label = Some(HEARTBEAT_LABEL.to_owned());
            Client::with_options(client.address(), peer_options)?
                .join()
                .await?
        } else {
            client.join().await?
        };
        Ok(Self::start(client, options, Start::Parent(parent)))
    }

    fn start(client: Client, options: NodeOptions, start: Start) -> Self {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (info, task) = task::spawn(client, options, start, command_rx, event_tx);
        Self {
            commands,
            events,
            info,
            task: Some(task),
        }
    }

    /// The next event; `None` once the node is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The node's links now.
    #[must_use]
    pub fn info(&self) -> NodeInfo {
        self.info.borrow().clone()
    }

    /// A receiver of link changes.
    #[must_use]
    pub fn info_receiver(&self) -> watch::Receiver<NodeInfo> {
        self.info.clone()
    }

    /// Sends `data` to the parent (one hop).
    ///
    /// # Errors
    /// [`Error::NoParent`] when there is none, [`Error::Closed`] after close.
    pub async fn send_to_parent(&self, data: Value) -> Result<(), Error> {
        self.send(Target::Parent, wire::data(&data)).await
    }

    /// Sends `data` to one child (one hop).
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::Closed`].
    pub async fn send_to_child(&self, child: &str, data: Value) -> Result<(), Error> {
        self.send(Target::Child(child.to_owned()), wire::data(&data))
            .await
    }

    /// Sends `data` down the whole subtree: to every child, which forwards it on.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn broadcast(&self, data: Value) -> Result<(), Error> {
        let text = wire::wrapped_data(BROADCAST_KEY, &data);
        self.send(Target::Children, text).await
    }

    /// Sends `data` up to the root, through every ancestor. At the root it is an
    /// [`Event::Data`] with [`crate::Delivery::ToRoot`].
    ///
    /// # Errors
    /// [`Error::NoParent`] when re-joining, [`Error::Closed`].
    pub async fn send_to_root(&self, data: Value) -> Result<(), Error> {
        let text = wire::wrapped_data(TO_ROOT_KEY, &data);
        self.send(Target::Parent, text).await
    }

    /// Closes the parent, every child and every candidate, and stops the node.
    pub async fn close(mut self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT, done).await;
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, task).await;
        }
    }

    async fn send(&self, to: Target, text: String) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Send { to, text, reply })
            .await
            .map_err(|_| Error::Closed)?;
        result.await.unwrap_or(Err(Error::Closed))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
