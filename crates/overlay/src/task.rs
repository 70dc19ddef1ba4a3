//! The task behind a [`crate::Node`]. It owns the IO: the parent's and the children's
//! data channels (each with a pump task from the `links` module), the answers in
//! progress, the re-join and the bootstrap root. It feeds every input to the IO-free
//! [`NodeState`] and executes the actions that come out; it decides nothing itself.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{info, warn};
use webrtc_bootstrap_peer::{
    Client, Error as PeerError, Peer, Request, Root, RootStatus, SignalSender,
};

use crate::event::Event;
use crate::links::{Input, feed_root, queue, spawn_link};
use crate::liveness::HEARTBEAT_LABEL;
use crate::node::{Command, NodeInfo};
use crate::options::NodeOptions;
use crate::state::{Action, Link, NodeState};
use crate::wire::JoinRequest;

/// Inputs queued for the node task.
const INPUT_QUEUE: usize = 1024;

/// How a node starts: as the root, or with the parent it joined.
pub(crate) enum Start {
    Root(Root),
    Parent(Peer),
}

/// Starts the task of a node. Returns the receiver of its link snapshots, already up to
/// date, and the task.
pub(crate) fn spawn(
    client: Client,
    options: NodeOptions,
    start: Start,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> (watch::Receiver<NodeInfo>, JoinHandle<()>) {
    let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE);
    let is_root = matches!(start, Start::Root(_));
    let mut random = [0u8; 7];
    // Only spreads delegated requests and names nodes; fixed bytes on failure still work.
    let _ = getrandom::fill(&mut random);
    let node_id = u32::from_le_bytes([random[0], random[1], random[2], random[3]]) % 1_000_000;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| random[4..].iter().map(|b| format!("{b:02x}")).collect());
    let state = NodeState::new(node_id, name, is_root, &options);
    let (info_tx, info) = watch::channel(state.info());
    let mut task = NodeTask {
        state,
        client,
        rejoin_timeout: options.rejoin_timeout,
        heartbeats: options.heartbeat_interval.is_some(),
        inputs,
        events,
        info: info_tx,
        links: HashMap::new(),
        candidates: HashMap::new(),
        rejoin: None,
        root_feeder: None,
    };
    // Take the parent or the root over before returning, so `info()` is right at once.
    match start {
        Start::Root(root) => {
            if root.status() == RootStatus::Standby {
                task.state.set_standby();
            }
            let feeder = feed_root(root, task.inputs.clone(), options.request_timeout);
            task.root_feeder = Some(AbortOnDrop(tokio::spawn(feeder)));
        }
        Start::Parent(peer) => task.adopt_parent(peer),
    }
    task.publish();
    (info, tokio::spawn(task.run(input_rx, commands)))
}

/// A task aborted when this handle is dropped, so nothing a node started outlives it
/// (a dropped [`crate::Node`] aborts its own task, and with it every such handle).
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
    state: NodeState,
    client: Client,
    /// The longest one re-join attempt may take ([`NodeOptions::rejoin_timeout`]).
    rejoin_timeout: Duration,
    /// Whether heartbeats are on: re-joins then label their channel so.
    heartbeats: bool,
    inputs: mpsc::Sender<Input>,
    events: mpsc::Sender<Event>,
    info: watch::Sender<NodeInfo>,
    /// The open data channels; dropping a sender makes its pump close the peer.
    links: HashMap<Link, mpsc::Sender<String>>,
    candidates: HashMap<String, Candidate>,
    rejoin: Option<AbortOnDrop>,
    root_feeder: Option<AbortOnDrop>,
}

impl NodeTask {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let closed = loop {
            self.execute().await;
            self.publish();
            let deadline = self.state.poll_timeout();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send { to, text, reply }) => {
                        let result = self.state.send(to, text);
                        self.execute().await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Close(reply)) => break Some(reply),
                    None => break None,
                },
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input),
                    None => break None,
                },
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    // What already arrived counts before a link is judged silent.
                    for _ in 0..INPUT_QUEUE {
                        let Ok(input) = inputs.try_recv() else { break };
                        self.on_input(input);
                        self.execute().await;
                    }
                    self.state.handle_timeout(Instant::now());
                }
            }
        };
        self.shutdown();
        self.publish();
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Request(request) => self.state.on_request(JoinRequest::from(request), now),
            Input::Answered { origin, result } => self.on_answered(&origin, result, now),
            Input::Message { link, message } => {
                self.state.on_message(&link, message.as_bytes(), now);
            }
            Input::Closed { link } => {
                self.links.remove(&link);
                self.state.link_closed(&link, now);
            }
            Input::Rejoined { attempt, result } => match result {
                Ok(peer) => {
                    self.rejoin = None;
                    info!(attempt, "re-joined the tree");
                    self.adopt_parent(peer);
                }
                Err(error) => self.state.rejoin_failed(attempt, error.to_string()),
            },
            Input::Promoted => self.state.promoted(),
            Input::RootStopped(reason) => self.state.root_stopped(reason),
        }
    }

    fn on_answered(&mut self, origin: &str, result: Result<Peer, PeerError>, now: Instant) {
        self.candidates.remove(origin);
        match result {
            Ok(peer) => {
                // `None`: it timed out meanwhile; dropping the peer closes it.
                let heartbeats = peer.label() == HEARTBEAT_LABEL;
                if let Some(link) = self.state.candidate_connected(origin, heartbeats, now) {
                    let tx = spawn_link(peer, link.clone(), self.inputs.clone());
                    self.links.insert(link, tx);
                }
            }
            Err(error) => self.state.candidate_failed(origin, &error),
        }
    }

    fn adopt_parent(&mut self, peer: Peer) {
        let id = peer.remote_id().unwrap_or_default().to_owned();
        let link = self.state.parent_connected(id, Instant::now());
        // Dropping an earlier parent's sender closes that link.
        self.links
            .retain(|link, _| !matches!(link, Link::Parent(_)));
        let tx = spawn_link(peer, link.clone(), self.inputs.clone());
        self.links.insert(link, tx);
    }

    /// Executes what the state decided, in order.
    async fn execute(&mut self) {
        while let Some(action) = self.state.poll_action() {
            match action {
                Action::Send { link, text } => {
                    if let Some(tx) = self.links.get(&link) {
                        queue(tx, text);
                    }
                }
                Action::Emit(event) => {
                    if self.events.try_send(event).is_err() {
                        warn!("event queue full or closed; event dropped");
                    }
                }
                Action::Answer(request) => self.answer(request),
                Action::Signal(request) => {
                    if let Some(candidate) = self.candidates.get(request.origin()) {
                        let _ = candidate.signals.signal(request).await;
                    }
                }
                // Dropping the candidate aborts its answer.
                Action::DropCandidate(origin) => drop(self.candidates.remove(&origin)),
                // Dropping its sender makes the pump close the peer.
                Action::CloseLink(link) => drop(self.links.remove(&link)),
                Action::Rejoin { attempt, delay } => self.start_rejoin(attempt, delay),
            }
        }
    }

    fn answer(&mut self, request: Request) {
        let origin = request.origin().to_owned();
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

    fn start_rejoin(&mut self, attempt: u32, delay: Duration) {
        let mut options = self.client.options().clone();
        options.timeout = options.timeout.min(self.rejoin_timeout);
        if self.heartbeats {
            options.channel_label = Some(HEARTBEAT_LABEL.to_owned());
        }
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

    fn shutdown(&mut self) {
        // Dropping these aborts their tasks; dropping a link's sender makes its pump
        // close the peer connection.
        self.root_feeder = None;
        self.rejoin = None;
        self.links.clear();
        self.candidates.clear();
        self.state.clear();
    }

    fn publish(&self) {
        let info = self.state.info();
        self.info.send_if_modified(|old| {
            let changed = *old != info;
            *old = info;
            changed
        });
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
