//! [`Node`]: one tree node running in its own task, over the peer library.
//!
//! The task owns the [`NodeCore`] and every link: the parent, the children, the
//! candidates being answered. Each data channel has a small task that pumps messages
//! between its [`Peer`] and the node task. The application talks to the node through
//! a handle ([`Node`]) and reads [`Event`]s.

use std::collections::HashMap;
use std::time::Duration;

use bootstrap_peer::{Client, Error as PeerError, Message, Peer, Request, Root, SignalSender};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::core::{Decision, NodeCore};
use crate::wire::{self, ChannelMessage};

/// How a node runs. Start from [`NodeOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOptions {
    /// Most children (JS `maxDegree`, default 10).
    pub max_degree: usize,
    /// How long a candidate may take to connect, and a stored request may wait for a
    /// child (JS `requestTimeoutInMs`, default 30 s).
    pub request_timeout: Duration,
    /// First delay before re-joining after the parent went away; doubles up to
    /// `rejoin_max_delay`.
    pub rejoin_delay: Duration,
    /// Longest delay between re-join attempts.
    pub rejoin_max_delay: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            max_degree: 10,
            request_timeout: Duration::from_secs(30),
            rejoin_delay: Duration::from_millis(200),
            rejoin_max_delay: Duration::from_secs(10),
        }
    }
}

/// Why a node could not start, or an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Joining, rooting or sending failed in the peer library.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// No child with this id.
    #[error("no child with id {0}")]
    NoSuchChild(String),
    /// This node has no parent (it is the root, or it is re-joining).
    #[error("no parent connected")]
    NoParent,
    /// The node was closed.
    #[error("the node is closed")]
    Closed,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This node's parent.
    Parent,
    /// The child with this id.
    Child(String),
}

/// How a message travels through the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One hop, to one neighbour: plain `{"type":"DATA","data":…}`.
    Direct,
    /// Down the whole subtree of the sender; every Rust node forwards it to its children.
    Broadcast,
    /// Up to the root; every Rust node forwards it to its parent.
    ToRoot,
}

/// Key of the `data` object that marks a broadcast: `{"broadcast": payload}`.
pub const BROADCAST_KEY: &str = "broadcast";
/// Key of the `data` object that marks a message for the root: `{"to-root": payload}`.
pub const TO_ROOT_KEY: &str = "to-root";

/// Something that happened at the node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The parent's data channel opened (first join or re-join). `id` is the parent's
    /// bootstrap `/join` id.
    ParentConnected {
        /// The answerer's `/join` id.
        id: Option<String>,
    },
    /// The parent went away; the node re-joins with backoff.
    ParentClosed,
    /// A re-join attempt failed; the next one follows after a backoff.
    RejoinFailed {
        /// Attempt number.
        attempt: u32,
        /// What failed.
        error: String,
    },
    /// A child's data channel opened.
    ChildConnected {
        /// The child's bootstrap `/join` id.
        id: String,
    },
    /// A child went away.
    ChildClosed {
        /// The child's id.
        id: String,
    },
    /// Application data arrived.
    Data {
        /// Who sent it (the neighbour, not the original author of a forwarded message).
        from: Source,
        /// How it travels; broadcasts were already forwarded to this node's children.
        delivery: Delivery,
        /// The payload.
        data: Value,
    },
    /// The root's connection to the bootstrap server stopped for good (replaced by
    /// another root, or the secret was rejected). Existing links keep working.
    RootStopped {
        /// Why.
        reason: String,
    },
}

/// A snapshot of the node's links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Whether this node is the root.
    pub is_root: bool,
    /// The parent's `/join` id, when connected (`Some("")` if it is unknown).
    pub parent: Option<String>,
    /// The children's ids, by slot order.
    pub children: Vec<String>,
    /// Newcomers being answered.
    pub candidates: usize,
    /// Requests waiting for a child slot.
    pub stored: usize,
}

/// Events the application has not read yet; past this they are dropped (with a warning)
/// rather than stalling the tree.
const EVENT_QUEUE: usize = 4096;
/// Messages queued for one data channel.
const LINK_QUEUE: usize = 256;
/// Inputs queued for the node task.
const INPUT_QUEUE: usize = 1024;

/// A running tree node. Dropping it closes the node and every link.
#[derive(Debug)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    info: watch::Receiver<NodeInfo>,
    task: Option<JoinHandle<()>>,
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

    /// Joins the tree through the bootstrap server; returns once the parent is connected.
    ///
    /// # Errors
    /// The peer library's error when the join fails (timeout, no root, ICE failure…).
    pub async fn join(client: Client, options: NodeOptions) -> Result<Self, Error> {
        let parent = client.join().await?;
        Ok(Self::start(client, options, Start::Parent(parent)))
    }

    fn start(client: Client, options: NodeOptions, start: Start) -> Self {
        let (commands, command_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let is_root = matches!(start, Start::Root(_));
        let (info_tx, info) = watch::channel(NodeInfo {
            is_root,
            ..NodeInfo::default()
        });
        let mut id = [0u8; 4];
        // Only spreads delegated requests; a fixed id on failure is still correct.
        let _ = getrandom::fill(&mut id);
        let node_id = u32::from_le_bytes(id) % 1_000_000;
        let mut task = NodeTask {
            core: NodeCore::new(node_id, options.max_degree, options.request_timeout),
            client,
            options,
            is_root,
            inputs: input_tx,
            events: event_tx,
            info: info_tx,
            parent: None,
            parent_generation: 0,
            rejoin: None,
            children: HashMap::new(),
            candidates: HashMap::new(),
            root_feeder: None,
        };
        // Take the parent or the root over before returning, so `info()` is right at once.
        match start {
            Start::Root(root) => {
                let feeder = feed_root(root, task.inputs.clone(), task.options.request_timeout);
                task.root_feeder = Some(tokio::spawn(feeder));
            }
            Start::Parent(peer) => task.adopt_parent(peer),
        }
        task.publish();
        let handle = tokio::spawn(task.run(input_rx, command_rx));
        Self {
            commands,
            events,
            info,
            task: Some(handle),
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
        self.command(|reply| Command::Send {
            to: Target::Parent,
            text: wire::data(&data),
            reply,
        })
        .await
    }

    /// Sends `data` to one child (one hop).
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::Closed`].
    pub async fn send_to_child(&self, child: &str, data: Value) -> Result<(), Error> {
        let to = Target::Child(child.to_owned());
        self.command(|reply| Command::Send {
            to,
            text: wire::data(&data),
            reply,
        })
        .await
    }

    /// Sends `data` down the whole subtree: to every child, which forwards it on.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn broadcast(&self, data: Value) -> Result<(), Error> {
        let text = wire::data(&wrap(BROADCAST_KEY, data));
        self.command(|reply| Command::Send {
            to: Target::Children,
            text,
            reply,
        })
        .await
    }

    /// Sends `data` up to the root, through every ancestor. At the root it is an
    /// [`Event::Data`] with [`Delivery::ToRoot`].
    ///
    /// # Errors
    /// [`Error::NoParent`] when re-joining, [`Error::Closed`].
    pub async fn send_to_root(&self, data: Value) -> Result<(), Error> {
        let text = wire::data(&wrap(TO_ROOT_KEY, data));
        self.command(|reply| Command::Send {
            to: Target::Parent,
            text,
            reply,
        })
        .await
    }

    /// Closes the parent, every child and every candidate, and stops the node.
    pub async fn close(mut self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(make(reply))
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

fn wrap(key: &str, data: Value) -> Value {
    let mut object = serde_json::Map::with_capacity(1);
    object.insert(key.to_owned(), data);
    Value::Object(object)
}

/// Splits a received payload into its delivery and the application data.
fn unwrap(data: Value) -> (Delivery, Value) {
    match data {
        Value::Object(mut object) if object.len() == 1 => {
            if let Some(inner) = object.remove(BROADCAST_KEY) {
                (Delivery::Broadcast, inner)
            } else if let Some(inner) = object.remove(TO_ROOT_KEY) {
                (Delivery::ToRoot, inner)
            } else {
                (Delivery::Direct, Value::Object(object))
            }
        }
        other => (Delivery::Direct, other),
    }
}

enum Start {
    Root(Root),
    Parent(Peer),
}

enum Target {
    Parent,
    Child(String),
    Children,
}

enum Command {
    Send {
        to: Target,
        text: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Close(oneshot::Sender<()>),
}

/// Which link an input is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// The parent, by generation (a re-join starts a new one).
    Parent(u64),
    Child(String),
}

enum Input {
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

/// A pending candidate: the sender of its later requests and the task awaiting it.
struct Candidate {
    signals: SignalSender,
    task: JoinHandle<()>,
}

struct NodeTask {
    core: NodeCore<Request>,
    client: Client,
    options: NodeOptions,
    is_root: bool,
    inputs: mpsc::Sender<Input>,
    events: mpsc::Sender<Event>,
    info: watch::Sender<NodeInfo>,
    parent: Option<(String, mpsc::Sender<String>)>,
    parent_generation: u64,
    rejoin: Option<JoinHandle<()>>,
    children: HashMap<String, mpsc::Sender<String>>,
    candidates: HashMap<String, Candidate>,
    root_feeder: Option<JoinHandle<()>>,
}

impl NodeTask {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let closed = loop {
            let deadline = self.core.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send { to, text, reply }) => {
                        let _ = reply.send(self.send(&to, text));
                    }
                    Some(Command::Close(reply)) => break Some(reply),
                    None => break None,
                },
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input).await,
                    None => break None,
                },
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    self.expire();
                }
            }
            self.publish();
        };
        self.shutdown();
        self.publish();
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    fn shutdown(&mut self) {
        if let Some(feeder) = self.root_feeder.take() {
            feeder.abort();
        }
        if let Some(rejoin) = self.rejoin.take() {
            rejoin.abort();
        }
        // Dropping a link's sender makes its pump close the peer connection.
        self.parent = None;
        self.children.clear();
        for (_, candidate) in self.candidates.drain() {
            candidate.task.abort();
        }
        self.core.clear();
    }

    fn publish(&self) {
        let info = NodeInfo {
            is_root: self.is_root,
            parent: self.parent.as_ref().map(|(id, _)| id.clone()),
            children: self.core.children().map(|(_, id)| id.to_owned()).collect(),
            candidates: self.core.candidate_count(),
            stored: self.core.stored_count(),
        };
        self.info.send_if_modified(|old| {
            let changed = *old != info;
            *old = info;
            changed
        });
    }

    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            warn!("event queue full or closed; event dropped");
        }
    }

    fn send(&self, to: &Target, text: String) -> Result<(), Error> {
        match to {
            Target::Parent => {
                let (_, tx) = self.parent.as_ref().ok_or(Error::NoParent)?;
                queue(tx, text);
            }
            Target::Child(id) => queue(
                self.children
                    .get(id)
                    .ok_or_else(|| Error::NoSuchChild(id.clone()))?,
                text,
            ),
            Target::Children => {
                for tx in self.children.values() {
                    queue(tx, text.clone());
                }
            }
        }
        Ok(())
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Request(request) => self.on_request(request).await,
            Input::Answered { origin, result } => self.on_answered(&origin, result),
            Input::Message { link, message } => self.on_message(link, &message).await,
            Input::Closed { link } => self.on_closed(link),
            Input::Rejoined { attempt, result } => match result {
                Ok(peer) => {
                    self.rejoin = None;
                    info!(attempt, "re-joined the tree");
                    self.adopt_parent(peer);
                }
                Err(error) => {
                    self.emit(Event::RejoinFailed {
                        attempt,
                        error: error.to_string(),
                    });
                    self.start_rejoin(attempt + 1);
                }
            },
            Input::RootStopped(reason) => {
                warn!(%reason, "the bootstrap root stopped");
                self.emit(Event::RootStopped { reason });
            }
        }
    }

    async fn on_request(&mut self, request: Request) {
        let origin = request.origin().to_owned();
        let is_offer = matches!(request.signal(), bootstrap_peer::Signal::Description(_));
        match self
            .core
            .on_request(&origin, is_offer, request, Instant::now())
        {
            Decision::ToCandidate(request) => {
                if let Some(candidate) = self.candidates.get(&origin) {
                    let _ = candidate.signals.signal(request).await;
                }
            }
            Decision::Answer(request) => {
                debug!(%origin, "answering a newcomer");
                let answerer = self.client.answer(request);
                let signals = answerer.signal_sender();
                let inputs = self.inputs.clone();
                let key = origin.clone();
                let task = tokio::spawn(async move {
                    let result = answerer.connected().await;
                    let _ = inputs.send(Input::Answered { origin, result }).await;
                });
                self.candidates.insert(key, Candidate { signals, task });
            }
            Decision::Forward { child, request } => {
                debug!(%origin, %child, "delegating a join request");
                if let Some(tx) = self.children.get(&child) {
                    queue(tx, wire::join_request(&request.to_json()));
                }
            }
            Decision::Stored { slot } => {
                debug!(%origin, slot, "join request stored for an empty slot")
            }
            Decision::Dropped(why) => debug!(%origin, ?why, "join request dropped"),
        }
    }

    fn on_answered(&mut self, origin: &str, result: Result<Peer, PeerError>) {
        self.candidates.remove(origin);
        match result {
            Ok(peer) => match self.core.candidate_connected(origin) {
                Some((slot, stored)) => {
                    let tx = spawn_link(peer, Link::Child(origin.to_owned()), self.inputs.clone());
                    for request in stored {
                        queue(&tx, wire::join_request(&request.to_json()));
                    }
                    self.children.insert(origin.to_owned(), tx);
                    info!(%origin, slot, "child connected");
                    self.emit(Event::ChildConnected {
                        id: origin.to_owned(),
                    });
                }
                None => debug!(%origin, "a candidate connected after its timeout; closed"),
            },
            Err(error) => {
                self.core.candidate_failed(origin);
                info!(%origin, %error, "answering a newcomer failed");
            }
        }
    }

    async fn on_message(&mut self, link: Link, message: &Message) {
        let parsed = match wire::parse(message.as_bytes()) {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!(?link, %error, "ignored a data-channel message");
                return;
            }
        };
        let from = match &link {
            Link::Parent(generation) if *generation == self.parent_generation => Source::Parent,
            Link::Parent(_) => return,
            Link::Child(id) => Source::Child(id.clone()),
        };
        match parsed {
            ChannelMessage::JoinRequest(text) => {
                if from != Source::Parent {
                    warn!(?link, "ignored a join request from a child");
                    return;
                }
                match Request::from_json(&text) {
                    Ok(request) => self.on_request(request).await,
                    Err(error) => warn!(%error, "ignored a malformed join request"),
                }
            }
            ChannelMessage::Data(data) => {
                let (delivery, data) = unwrap(data);
                match delivery {
                    Delivery::Broadcast if from == Source::Parent => {
                        let text = wire::data(&wrap(BROADCAST_KEY, data.clone()));
                        for tx in self.children.values() {
                            queue(tx, text.clone());
                        }
                    }
                    Delivery::ToRoot if !self.is_root && matches!(from, Source::Child(_)) => {
                        if let Some((_, tx)) = &self.parent {
                            queue(tx, wire::data(&wrap(TO_ROOT_KEY, data)));
                        } else {
                            debug!("dropped a message for the root while re-joining");
                        }
                        return;
                    }
                    _ => {}
                }
                self.emit(Event::Data {
                    from,
                    delivery,
                    data,
                });
            }
        }
    }

    fn on_closed(&mut self, link: Link) {
        match link {
            Link::Parent(generation)
                if generation == self.parent_generation && self.parent.is_some() =>
            {
                self.parent = None;
                info!("parent closed; re-joining");
                self.emit(Event::ParentClosed);
                self.start_rejoin(1);
            }
            Link::Parent(_) => {}
            Link::Child(id) => {
                if self.children.remove(&id).is_some() {
                    self.core.child_closed(&id);
                    info!(%id, "child closed");
                    self.emit(Event::ChildClosed { id });
                }
            }
        }
    }

    fn adopt_parent(&mut self, peer: Peer) {
        self.parent_generation += 1;
        let id = peer.remote_id().unwrap_or_default().to_owned();
        let tx = spawn_link(
            peer,
            Link::Parent(self.parent_generation),
            self.inputs.clone(),
        );
        self.parent = Some((id.clone(), tx));
        self.emit(Event::ParentConnected {
            id: (!id.is_empty()).then_some(id),
        });
    }

    fn start_rejoin(&mut self, attempt: u32) {
        let shift = attempt.saturating_sub(1).min(16);
        let delay = self
            .options
            .rejoin_delay
            .saturating_mul(1 << shift)
            .min(self.options.rejoin_max_delay);
        let client = self.client.clone();
        let inputs = self.inputs.clone();
        self.rejoin = Some(tokio::spawn(async move {
            sleep(delay).await;
            let result = client.join().await;
            let _ = inputs.send(Input::Rejoined { attempt, result }).await;
        }));
    }

    fn expire(&mut self) {
        let expired = self.core.expire(Instant::now());
        for origin in expired.candidates {
            if let Some(candidate) = self.candidates.remove(&origin) {
                candidate.task.abort();
                info!(%origin, "candidate timed out");
            }
        }
        if expired.requests > 0 {
            debug!(count = expired.requests, "stored join requests timed out");
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Queues a message on a link without waiting; a full link drops it with a warning.
fn queue(tx: &mpsc::Sender<String>, text: String) {
    if tx.try_send(text).is_err() {
        warn!("link queue full or closed; message dropped");
    }
}

/// Starts the pump of one data channel; dropping the returned sender closes it.
fn spawn_link(mut peer: Peer, link: Link, inputs: mpsc::Sender<Input>) -> mpsc::Sender<String> {
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
async fn feed_root(mut root: Root, inputs: mpsc::Sender<Input>, lifetime: Duration) {
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
