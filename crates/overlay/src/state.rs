//! The IO-free core of a tree node: its parent, its child slots, its topology reports,
//! and the routing of every message it receives.
//!
//! Inputs go in as method calls (a join request, a message on a link, a link that opened
//! or closed, a send by the application, a timeout), with `now` where time matters.
//! What to do comes out of [`NodeState::poll_action`], for the node task to execute, and
//! [`NodeState::poll_timeout`] says when to call [`NodeState::handle_timeout`] next. No
//! sockets, no tasks, no clock.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use webrtc_bootstrap_peer::Request;

use crate::error::Error;
use crate::event::{Delivery, Event, Source};
use crate::liveness::{Heartbeat, Liveness};
use crate::node::NodeInfo;
use crate::options::NodeOptions;
use crate::slots::{Decision, Slots};
use crate::topology::{self, SUBTREE_KEY, TREE_KEY, Topology, as_subtree_report, tree_of};
use crate::wire::{self, BROADCAST_KEY, ChannelMessage, JoinRequest, TO_ROOT_KEY};

/// One data channel of the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Link {
    /// The parent, by generation: every join and re-join starts a new one, so the late
    /// messages and close of an earlier parent are told apart.
    Parent(u64),
    /// The child with this `/join` id.
    Child(String),
}

/// Where the application sends data.
#[derive(Debug)]
pub(crate) enum Target {
    /// The parent.
    Parent,
    /// The child with this id.
    Child(String),
    /// Every child.
    Children,
}

/// What the node task does for the state.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Queue `text` on this link (nothing if the link is gone).
    Send {
        /// Where to.
        link: Link,
        /// The message, JSON text.
        text: String,
    },
    /// Tell the application.
    Emit(Event),
    /// Answer this newcomer, which became a candidate.
    Answer(Request),
    /// Hand a later signal to the candidate answering its origin.
    Signal(Request),
    /// Give up the candidate with this origin (it timed out): abort its answer.
    DropCandidate(String),
    /// Close this link: it went silent (its heartbeats stopped). The state already
    /// treated it as closed.
    CloseLink(Link),
    /// Re-join the tree after `delay`.
    Rejoin {
        /// Attempt number, from 1.
        attempt: u32,
        /// How long to wait first.
        delay: Duration,
    },
}

/// The connected parent.
#[derive(Debug)]
struct Parent {
    /// Its `/join` id (empty if unknown).
    id: String,
    generation: u64,
}

/// One tree node, without its IO.
#[derive(Debug)]
pub(crate) struct NodeState {
    name: String,
    is_root: bool,
    /// A standby root not promoted yet.
    standby: bool,
    slots: Slots<JoinRequest>,
    parent: Option<Parent>,
    /// The generation of the latest parent link, connected or not.
    generation: u64,
    /// Set when topology reports are on.
    topology: Option<Topology>,
    rejoin_delay: Duration,
    rejoin_max_delay: Duration,
    /// Set when heartbeats are on.
    liveness: Option<Liveness>,
    /// At the root: the picture of the tree waiting for `next_share`.
    pending_share: Option<Value>,
    /// At the root: when the tree may next be shared.
    next_share: Option<Instant>,
    actions: VecDeque<Action>,
}

impl NodeState {
    /// A node named `name` with local id `node_id` (which only spreads delegated
    /// requests), with no parent and no child yet.
    pub(crate) fn new(node_id: u32, name: String, is_root: bool, options: &NodeOptions) -> Self {
        Self {
            slots: Slots::new(node_id, options.max_degree, options.request_timeout),
            topology: options.report_topology.then(|| Topology::new(name.clone())),
            name,
            is_root,
            standby: false,
            parent: None,
            generation: 0,
            rejoin_delay: options.rejoin_delay,
            rejoin_max_delay: options.rejoin_max_delay,
            liveness: options.heartbeat_interval.map(|interval| {
                Liveness::new(Heartbeat {
                    interval,
                    timeout: options.heartbeat_timeout,
                })
            }),
            pending_share: None,
            next_share: None,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do; call until `None` after every input.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`NodeState::handle_timeout`] next has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let report = self.topology.as_ref().and_then(Topology::due);
        let liveness = self.liveness.as_ref().and_then(Liveness::next_deadline);
        let share = self.pending_share.as_ref().and(self.next_share);
        self.slots
            .next_deadline()
            .into_iter()
            .chain(report)
            .chain(liveness)
            .chain(share)
            .min()
    }

    /// Expires candidates and stored requests, sends heartbeats, closes links gone
    /// silent, and sends the topology report when due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let (due, dead) = match &mut self.liveness {
            Some(liveness) => {
                let dead = liveness.take_dead(now);
                let due = liveness.due(now);
                for link in &due {
                    liveness.sent(link, now);
                }
                (due, dead)
            }
            None => (Vec::new(), Vec::new()),
        };
        for link in due {
            self.actions.push_back(Action::Send {
                link,
                text: wire::HEARTBEAT.to_owned(),
            });
        }
        for link in dead {
            warn!(?link, "no heartbeat; closing the link");
            self.actions.push_back(Action::CloseLink(link.clone()));
            self.closed(&link, true, now);
        }
        let expired = self.slots.expire(now);
        for origin in expired.candidates {
            info!(%origin, "candidate timed out");
            self.actions.push_back(Action::DropCandidate(origin));
        }
        if expired.requests > 0 {
            debug!(count = expired.requests, "stored join requests timed out");
        }
        self.report_topology(now);
        self.share_tree(now);
    }

    /// The application sends `text` (a `DATA` message).
    ///
    /// # Errors
    /// [`Error::NoParent`] or [`Error::NoSuchChild`] when the target is not connected.
    pub(crate) fn send(&mut self, to: Target, text: String) -> Result<(), Error> {
        match to {
            Target::Parent => {
                let link = self.parent_link().ok_or(Error::NoParent)?;
                self.actions.push_back(Action::Send { link, text });
            }
            Target::Child(id) if self.slots.is_child(&id) => {
                let link = Link::Child(id);
                self.actions.push_back(Action::Send { link, text });
            }
            Target::Child(id) => return Err(Error::NoSuchChild(id)),
            Target::Children => self.send_to_children(&text),
        }
        Ok(())
    }

    /// A join request, from the bootstrap server (at the root) or from the parent.
    pub(crate) fn on_request(&mut self, request: JoinRequest, now: Instant) {
        let origin = request.origin().to_owned();
        let is_offer = request.is_offer();
        let liveness = self.liveness.as_ref();
        let is_quiet =
            |child: &str| liveness.is_some_and(|l| l.is_quiet(&Link::Child(child.to_owned()), now));
        let action = match self
            .slots
            .on_request(&origin, is_offer, request, now, is_quiet)
        {
            Decision::ToCandidate(request) => Action::Signal(request.into_request()),
            Decision::Answer(request) => {
                debug!(%origin, "answering a newcomer");
                Action::Answer(request.into_request())
            }
            Decision::Forward { child, request } => {
                debug!(%origin, %child, "delegating a join request");
                Action::Send {
                    link: Link::Child(child),
                    text: request.into_frame(),
                }
            }
            Decision::Stored { slot } => {
                debug!(%origin, slot, "join request stored for an empty slot");
                return;
            }
            Decision::Dropped(why) => {
                debug!(%origin, ?why, "join request dropped");
                return;
            }
        };
        self.actions.push_back(action);
    }

    /// A message arrived on `link`.
    pub(crate) fn on_message(&mut self, link: &Link, bytes: &[u8], now: Instant) {
        if let Some(liveness) = &mut self.liveness {
            liveness.heard(link, now);
        }
        if let Link::Child(id) = link {
            // Requests held while this child was quiet go to it now, in order.
            if let Some(slot) = self.slots.slot_of(id) {
                for request in self.slots.take_stored(slot) {
                    self.actions.push_back(Action::Send {
                        link: link.clone(),
                        text: request.into_frame(),
                    });
                }
            }
        }
        let message = match wire::parse(bytes) {
            Ok(message) => message,
            Err(error) => {
                warn!(?link, %error, "ignored a data-channel message");
                return;
            }
        };
        let from = match link {
            Link::Parent(generation) if *generation == self.generation => Source::Parent,
            Link::Parent(_) => return,
            Link::Child(id) => Source::Child(id.clone()),
        };
        match message {
            ChannelMessage::JoinRequest(request) if from == Source::Parent => {
                self.on_request(request, now);
            }
            ChannelMessage::JoinRequest(_) => warn!(?link, "ignored a join request from a child"),
            ChannelMessage::Data(data) => self.on_data(from, data, bytes, now),
            // A child's heartbeats were expected (its label said so); a parent's first
            // one says it supports them: watch it, and answer at once.
            ChannelMessage::Heartbeat => {
                if let Some(liveness) = &mut self.liveness
                    && from == Source::Parent
                    && liveness.watch(link.clone(), now)
                {
                    liveness.sent(link, now);
                    self.actions.push_back(Action::Send {
                        link: link.clone(),
                        text: wire::HEARTBEAT.to_owned(),
                    });
                }
            }
        }
    }

    /// Routes application data: subtree reports are kept, broadcasts from the parent go
    /// on to every child, messages for the root go up, and the rest is delivered.
    ///
    /// `frame` is the message as received: a broadcast goes on to the children as is,
    /// without serializing it again (a tree picture can be large).
    fn on_data(&mut self, from: Source, data: Value, frame: &[u8], now: Instant) {
        if let (Source::Child(child), Some(subtree)) = (&from, as_subtree_report(&data)) {
            let accepted = self
                .topology
                .as_mut()
                .is_none_or(|topology| topology.child_report(child, subtree.clone(), now));
            if !accepted {
                warn!(%child, "ignored a malformed subtree report");
            }
            return;
        }
        let (delivery, data) = wire::unwrap(data);
        match delivery {
            Delivery::Broadcast if from == Source::Parent => match std::str::from_utf8(frame) {
                Ok(text) => self.send_to_children(text),
                Err(_) => self.send_to_children(&wire::wrapped_data(BROADCAST_KEY, &data)),
            },
            Delivery::ToRoot if !self.is_root && matches!(from, Source::Child(_)) => {
                match self.parent_link() {
                    Some(link) => self.actions.push_back(Action::Send {
                        link,
                        text: wire::wrapped_data(TO_ROOT_KEY, &data),
                    }),
                    None => debug!("dropped a message for the root while re-joining"),
                }
                return;
            }
            _ => {}
        }
        let event = match tree_of(delivery, data) {
            Ok(tree) => Event::Tree(tree),
            Err(data) => Event::Data {
                from,
                delivery,
                data,
            },
        };
        self.actions.push_back(Action::Emit(event));
    }

    /// The data channel to a new parent (`id`, empty if unknown) opened. Returns the
    /// link to run it as.
    pub(crate) fn parent_connected(&mut self, id: String, now: Instant) -> Link {
        self.generation += 1;
        if let Some(topology) = &mut self.topology {
            topology.reset(now);
        }
        self.actions.push_back(Action::Emit(Event::ParentConnected {
            id: (!id.is_empty()).then(|| id.clone()),
        }));
        self.parent = Some(Parent {
            id,
            generation: self.generation,
        });
        Link::Parent(self.generation)
    }

    /// A candidate's data channel opened; `heartbeats` when the newcomer said it
    /// supports them ([`crate::HEARTBEAT_LABEL`]). Returns the link to run it as, or
    /// `None` when it is no longer a candidate (it timed out): close it.
    pub(crate) fn candidate_connected(
        &mut self,
        origin: &str,
        heartbeats: bool,
        now: Instant,
    ) -> Option<Link> {
        let Some((slot, stored)) = self.slots.candidate_connected(origin) else {
            debug!(%origin, "a candidate connected after its timeout; closed");
            return None;
        };
        info!(%origin, slot, "child connected");
        let link = Link::Child(origin.to_owned());
        if let Some(liveness) = &mut self.liveness
            && heartbeats
            && liveness.watch(link.clone(), now)
        {
            liveness.sent(&link, now);
            self.actions.push_back(Action::Send {
                link: link.clone(),
                text: wire::HEARTBEAT.to_owned(),
            });
        }
        for request in stored {
            self.actions.push_back(Action::Send {
                link: link.clone(),
                text: request.into_frame(),
            });
        }
        if let Some(topology) = &mut self.topology {
            topology.touch(now);
        }
        self.actions.push_back(Action::Emit(Event::ChildConnected {
            id: origin.to_owned(),
        }));
        Some(link)
    }

    /// Answering the candidate `origin` failed.
    pub(crate) fn candidate_failed(&mut self, origin: &str, error: &dyn fmt::Display) {
        self.slots.candidate_failed(origin);
        info!(%origin, %error, "answering a newcomer failed");
    }

    /// The data channel `link` closed.
    pub(crate) fn link_closed(&mut self, link: &Link, now: Instant) {
        self.closed(link, false, now);
    }

    /// `link` closed, or went silent (`silent`: its heartbeats stopped).
    fn closed(&mut self, link: &Link, silent: bool, now: Instant) {
        if let Some(liveness) = &mut self.liveness {
            liveness.forget(link);
        }
        match link {
            Link::Parent(generation) if *generation == self.generation && self.parent.is_some() => {
                self.parent = None;
                info!(silent, "parent closed; re-joining");
                self.actions.push_back(Action::Emit(Event::ParentClosed));
                if silent {
                    // The grandparent holds requests for its quiet child: go at once.
                    self.actions.push_back(Action::Rejoin {
                        attempt: 1,
                        delay: Duration::ZERO,
                    });
                } else {
                    self.rejoin(1);
                }
            }
            Link::Parent(_) => {}
            Link::Child(id) => {
                if let Some(slot) = self.slots.child_closed(id) {
                    if let Some(topology) = &mut self.topology {
                        topology.child_gone(id, now);
                    }
                    info!(%id, silent, "child closed");
                    self.actions
                        .push_back(Action::Emit(Event::ChildClosed { id: id.clone() }));
                    // Requests held for it are decided again: answered here, now that
                    // there is room, or stored for the next child in its slot.
                    for request in self.slots.take_stored(slot) {
                        self.on_request(request, now);
                    }
                }
            }
        }
    }

    /// Re-join attempt `attempt` failed: try again after a longer delay.
    pub(crate) fn rejoin_failed(&mut self, attempt: u32, error: String) {
        self.actions
            .push_back(Action::Emit(Event::RejoinFailed { attempt, error }));
        self.rejoin(attempt + 1);
    }

    /// The root's connection to the bootstrap server stopped for good.
    /// This root waits as a standby root until the server promotes it.
    pub(crate) fn set_standby(&mut self) {
        self.standby = self.is_root;
    }

    /// The server promoted this standby root: join requests reach it now.
    pub(crate) fn promoted(&mut self) {
        if std::mem::replace(&mut self.standby, false) {
            info!("promoted: this standby root is the active root now");
            self.actions.push_back(Action::Emit(Event::Promoted));
        }
    }

    pub(crate) fn root_stopped(&mut self, reason: String) {
        warn!(%reason, "the bootstrap root stopped");
        self.actions
            .push_back(Action::Emit(Event::RootStopped { reason }));
    }

    /// The node's links now.
    pub(crate) fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.name.clone(),
            is_root: self.is_root,
            standby: self.standby,
            parent: self.parent.as_ref().map(|parent| parent.id.clone()),
            children: self.slots.children().map(|(_, id)| id.to_owned()).collect(),
            candidates: self.slots.candidate_count(),
            stored: self.slots.stored_count(),
        }
    }

    /// Forgets the parent, every child, candidate, stored request and pending action
    /// (on close).
    pub(crate) fn clear(&mut self) {
        self.parent = None;
        self.slots.clear();
        if let Some(liveness) = &mut self.liveness {
            liveness.clear();
        }
        self.actions.clear();
    }

    fn parent_link(&self) -> Option<Link> {
        self.parent
            .as_ref()
            .map(|parent| Link::Parent(parent.generation))
    }

    fn send_to_children(&mut self, text: &str) {
        for (_, id) in self.slots.children() {
            self.actions.push_back(Action::Send {
                link: Link::Child(id.to_owned()),
                text: text.to_owned(),
            });
        }
    }

    /// Schedules re-join attempt `attempt`: the delay doubles from `rejoin_delay` up to
    /// `rejoin_max_delay`.
    fn rejoin(&mut self, attempt: u32) {
        let shift = attempt.saturating_sub(1).min(16);
        let delay = self
            .rejoin_delay
            .saturating_mul(1 << shift)
            .min(self.rejoin_max_delay);
        self.actions.push_back(Action::Rejoin { attempt, delay });
    }

    /// Sends this node's subtree to the parent or, at the root, shares the whole tree,
    /// when due and changed.
    /// At the root: shares the pending picture of the tree with everyone, when its
    /// time has come.
    fn share_tree(&mut self, now: Instant) {
        if self.next_share.is_some_and(|at| at > now) {
            return;
        }
        let Some(tree) = self.pending_share.take() else {
            return;
        };
        self.next_share = Some(now + share_interval(topology::size(&tree)));
        let text = wire::wrapped_data(BROADCAST_KEY, &wire::wrap(TREE_KEY, tree));
        self.send_to_children(&text);
    }

    fn report_topology(&mut self, now: Instant) {
        let Some(topology) = &mut self.topology else {
            return;
        };
        let children = self.slots.children().map(|(_, id)| id);
        let Some(tree) = topology.poll(now, children) else {
            return;
        };
        if self.is_root {
            // Everyone receives and parses the whole picture: a large one is shared
            // less often (the latest one, when its time comes), so that the cost stays
            // linear in the tree's size. The root's own picture is never held back.
            self.pending_share = Some(tree.clone());
            self.share_tree(now);
            self.actions.push_back(Action::Emit(Event::Tree(tree)));
        } else if let Some(link) = self.parent_link() {
            let text = wire::wrapped_data(SUBTREE_KEY, &tree);
            self.actions.push_back(Action::Send { link, text });
        }
    }
}

/// The least time between two pictures of a tree of `size` nodes shared by the root:
/// the debounce, and 2 ms per node beyond 50 nodes (2 s for 1 000 nodes).
fn share_interval(size: usize) -> Duration {
    topology::DEBOUNCE.max(Duration::from_millis(
        u64::try_from(size.saturating_mul(2)).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests;
