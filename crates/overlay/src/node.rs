//! [`Node`]: one tree node running in its own task, over the peer library.
//!
//! The task owns the [`NodeCore`] and every link: the parent, the children, the
//! candidates being answered. Each data channel has a small pump task (the `links`
//! module) between its peer and the node task. The application talks to the
//! node through a handle ([`Node`]) and reads [`Event`]s.

use std::collections::HashMap;
use std::time::Duration;

use webrtc_bootstrap_peer::{Client, Error as PeerError, Message, Peer, Request, Root, SignalSender};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::core::{Decision, NodeCore};
use crate::event::{
    BROADCAST_KEY, Delivery, Error, Event, NodeInfo, NodeOptions, Source, TO_ROOT_KEY, tree_of,
    unwrap, wrap,
};
use crate::links::{Input, Link, feed_root, queue, spawn_link};
use crate::topology::{SUBTREE_KEY, TREE_KEY, Topology, as_subtree_report};
use crate::wire::{self, ChannelMessage};

/// Events the application has not read yet; past this they are dropped (with a warning)
/// rather than stalling the tree.
const EVENT_QUEUE: usize = 4096;
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
        let mut random = [0u8; 7];
        // Only spreads delegated requests and names nodes; fixed bytes on failure still work.
        let _ = getrandom::fill(&mut random);
        let node_id = u32::from_le_bytes([random[0], random[1], random[2], random[3]]) % 1_000_000;
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| random[4..].iter().map(|b| format!("{b:02x}")).collect());
        let (info_tx, info) = watch::channel(NodeInfo {
            name: name.clone(),
            is_root,
            ..NodeInfo::default()
        });
        let topology = options.report_topology.then(|| Topology::new(name.clone()));
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
            name,
            topology,
        };
        // Take the parent or the root over before returning, so `info()` is right at once.
        match start {
            Start::Root(root) => {
                let feeder = feed_root(root, task.inputs.clone(), task.options.request_timeout);
                task.root_feeder = Some(AbortOnDrop(tokio::spawn(feeder)));
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

/// A task aborted when this handle is dropped, so nothing a node started outlives it
/// (a dropped [`Node`] aborts its own task, and with it every such handle).
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pending candidate: the sender of its later requests and the task awaiting it.
struct Candidate {
    signals: SignalSender,
    /// Held only to abort the answer when the candidate is dropped.
    _task: AbortOnDrop,
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
    rejoin: Option<AbortOnDrop>,
    children: HashMap<String, mpsc::Sender<String>>,
    candidates: HashMap<String, Candidate>,
    root_feeder: Option<AbortOnDrop>,
    name: String,
    topology: Option<Topology>,
}

impl NodeTask {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let closed = loop {
            let deadline = self.core.next_deadline();
            let report_due = self.topology.as_ref().and_then(Topology::due);
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
                () = sleep_until(report_due.unwrap_or_else(far_future)), if report_due.is_some() => {
                    self.report_topology();
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
        // Dropping these aborts their tasks; dropping a link's sender makes its pump
        // close the peer connection.
        self.root_feeder = None;
        self.rejoin = None;
        self.parent = None;
        self.children.clear();
        self.candidates.clear();
        self.core.clear();
    }

    fn publish(&self) {
        let info = NodeInfo {
            name: self.name.clone(),
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
        let is_offer = matches!(request.signal(), webrtc_bootstrap_peer::Signal::Description(_));
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
                let task = AbortOnDrop(tokio::spawn(async move {
                    let result = answerer.connected().await;
                    let _ = inputs.send(Input::Answered { origin, result }).await;
                }));
                self.candidates.insert(
                    key,
                    Candidate {
                        signals,
                        _task: task,
                    },
                );
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
                    if let Some(topology) = &mut self.topology {
                        topology.touch(Instant::now());
                    }
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
                if let (Source::Child(child), Some(subtree)) = (&from, as_subtree_report(&data)) {
                    let accepted = self.topology.as_mut().is_none_or(|topology| {
                        topology.child_report(child, subtree.clone(), Instant::now())
                    });
                    if !accepted {
                        warn!(%child, "ignored a malformed subtree report");
                    }
                    return;
                }
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
                match tree_of(delivery, &data) {
                    Some(tree) => self.emit(Event::Tree(tree.clone())),
                    None => self.emit(Event::Data {
                        from,
                        delivery,
                        data,
                    }),
                }
            }
        }
    }

    /// Sends this node's subtree to the parent, or at the root shares the whole tree.
    fn report_topology(&mut self) {
        let Some(topology) = &mut self.topology else {
            return;
        };
        let children = self.core.children().map(|(_, id)| id);
        let Some(tree) = topology.poll(Instant::now(), children) else {
            return;
        };
        if self.is_root {
            let text = wire::data(&wrap(BROADCAST_KEY, wrap(TREE_KEY, tree.clone())));
            for tx in self.children.values() {
                queue(tx, text.clone());
            }
            self.emit(Event::Tree(tree));
        } else if let Some((_, tx)) = &self.parent {
            queue(tx, wire::data(&wrap(SUBTREE_KEY, tree)));
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
                    if let Some(topology) = &mut self.topology {
                        topology.child_gone(&id, Instant::now());
                    }
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
        if let Some(topology) = &mut self.topology {
            topology.reset(Instant::now());
        }
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
        let mut options = self.client.options().clone();
        options.timeout = options.timeout.min(self.options.rejoin_timeout);
        let client = Client::with_options(self.client.address(), options);
        let inputs = self.inputs.clone();
        self.rejoin = Some(AbortOnDrop(tokio::spawn(async move {
            sleep(delay).await;
            let result = match client {
                Ok(client) => client.join().await,
                Err(error) => Err(error),
            };
            let _ = inputs.send(Input::Rejoined { attempt, result }).await;
        })));
    }

    fn expire(&mut self) {
        let expired = self.core.expire(Instant::now());
        for origin in expired.candidates {
            // Dropping the candidate aborts its answer.
            if self.candidates.remove(&origin).is_some() {
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
