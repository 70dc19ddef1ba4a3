//! Unit tests of the node state: inputs in, actions out, no IO.

use serde_json::json;
use webrtc_bootstrap_peer::{IceCandidate, SdpKind, SessionDescription, Signal};

use super::*;
use crate::hash::slot_for;
use crate::topology::DEBOUNCE;

const TIMEOUT: Duration = Duration::from_secs(30);

fn origin(i: u32) -> String {
    format!("{:06x}{}", i * 0x1_0001, "0".repeat(26))
}

fn node(max_degree: usize, is_root: bool, report_topology: bool) -> NodeState {
    let options = NodeOptions {
        max_degree,
        request_timeout: TIMEOUT,
        report_topology,
        ..NodeOptions::default()
    };
    NodeState::new(42, "me".into(), is_root, &options)
}

/// No action.
const NONE: [Action; 0] = [];

fn actions(node: &mut NodeState) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

fn connect_parent(node: &mut NodeState, id: &str, now: Instant) -> Link {
    let link = node.parent_connected(id.into(), now);
    let id = Some(id.to_owned()).filter(|id| !id.is_empty());
    assert_eq!(actions(node), [Action::Emit(Event::ParentConnected { id })]);
    link
}

fn offer(origin: &str) -> Request {
    let signal = Signal::Description(SessionDescription {
        kind: SdpKind::Offer,
        sdp: "v=0\r\n".into(),
    });
    Request::new(origin, signal).expect("an origin")
}

fn candidate(origin: &str) -> Request {
    let signal = Signal::Candidate {
        candidate: IceCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            sdp_m_line_index: Some(0),
            sdp_mid: Some("0".into()),
        },
    };
    Request::new(origin, signal).expect("an origin")
}

fn data(value: &Value) -> Vec<u8> {
    wire::data(value).into_bytes()
}

/// Connects the child `origin` through an offer from the bootstrap server.
fn add_child(node: &mut NodeState, origin: &str, now: Instant) -> Link {
    node.on_request(offer(origin).into(), now);
    assert_eq!(actions(node), [Action::Answer(offer(origin))]);
    let link = node
        .candidate_connected(origin, false, now)
        .expect("a candidate");
    assert_eq!(
        actions(node),
        [Action::Emit(Event::ChildConnected { id: origin.into() })]
    );
    link
}

fn send(link: &Link, text: impl Into<String>) -> Action {
    Action::Send {
        link: link.clone(),
        text: text.into(),
    }
}

#[test]
fn broadcasts_from_the_parent_go_down_and_are_delivered() {
    let now = Instant::now();
    let mut node = node(2, false, false);
    let parent = connect_parent(&mut node, "p", now);
    let kids = [
        add_child(&mut node, &origin(1), now),
        add_child(&mut node, &origin(2), now),
    ];
    let message = json!({"broadcast": {"n": 1}});
    node.on_message(&parent, &data(&message), now);
    let forwarded = wire::data(&message);
    assert_eq!(
        actions(&mut node),
        [
            send(&kids[0], forwarded.clone()),
            send(&kids[1], forwarded),
            Action::Emit(Event::Data {
                from: Source::Parent,
                delivery: Delivery::Broadcast,
                data: json!({"n": 1}),
            }),
        ]
    );
    // A child's broadcast is delivered here but goes no further.
    node.on_message(&kids[0], &data(&message), now);
    assert_eq!(
        actions(&mut node),
        [Action::Emit(Event::Data {
            from: Source::Child(origin(1)),
            delivery: Delivery::Broadcast,
            data: json!({"n": 1}),
        })]
    );
}

#[test]
fn messages_for_the_root_climb_to_it() {
    let now = Instant::now();
    let message = json!({"to-root": [1, 2]});
    let mut inner = node(1, false, false);
    let parent = connect_parent(&mut inner, "", now);
    let child = add_child(&mut inner, &origin(1), now);
    inner.on_message(&child, &data(&message), now);
    assert_eq!(actions(&mut inner), [send(&parent, wire::data(&message))]);
    // While re-joining there is nowhere to send it: dropped.
    inner.link_closed(&parent, now);
    actions(&mut inner);
    inner.on_message(&child, &data(&message), now);
    assert_eq!(actions(&mut inner), NONE);

    let mut root = node(1, true, false);
    let child = add_child(&mut root, &origin(1), now);
    root.on_message(&child, &data(&message), now);
    assert_eq!(
        actions(&mut root),
        [Action::Emit(Event::Data {
            from: Source::Child(origin(1)),
            delivery: Delivery::ToRoot,
            data: json!([1, 2]),
        })]
    );
}

#[test]
fn join_requests_from_the_parent_are_answered_or_forwarded_as_received() {
    let now = Instant::now();
    let mut node = node(1, false, false);
    let parent = connect_parent(&mut node, "p", now);
    // Room: the offer is answered, the newcomer's candidate goes to its answerer.
    let frame = wire_frame(&offer(&origin(1)));
    node.on_message(&parent, frame.as_bytes(), now);
    assert_eq!(actions(&mut node), [Action::Answer(offer(&origin(1)))]);
    let frame = wire_frame(&candidate(&origin(1)));
    node.on_message(&parent, frame.as_bytes(), now);
    assert_eq!(actions(&mut node), [Action::Signal(candidate(&origin(1)))]);
    let child = node
        .candidate_connected(&origin(1), false, now)
        .expect("a candidate");
    actions(&mut node);
    // Full: the next newcomer's requests go to the child, byte for byte.
    let odd = format!(
        r#"{{"type":"JOIN-REQUEST", "extra":1, "origin":"{}", "signal":{{"type":"offer","sdp":""}}}}"#,
        origin(2)
    );
    node.on_message(&parent, odd.as_bytes(), now);
    assert_eq!(actions(&mut node), [send(&child, odd.clone())]);
    // Join requests from a child, or from a parent that is gone, are ignored.
    node.on_message(&child, odd.as_bytes(), now);
    connect_parent(&mut node, "q", now);
    node.on_message(&parent, odd.as_bytes(), now);
    node.on_message(&parent, b"{\"type\":\"PING\"}", now);
    assert_eq!(actions(&mut node), NONE);
}

fn wire_frame(request: &Request) -> String {
    JoinRequest::from(request.clone()).into_frame()
}

#[test]
fn stored_requests_follow_the_new_child() {
    let now = Instant::now();
    let mut node = node(1, true, false);
    node.on_request(offer(&origin(1)).into(), now);
    node.on_request(offer(&origin(2)).into(), now);
    node.on_request(candidate(&origin(2)).into(), now);
    assert_eq!(actions(&mut node), [Action::Answer(offer(&origin(1)))]);
    assert_eq!(node.info().stored, 2);
    let child = node
        .candidate_connected(&origin(1), false, now)
        .expect("a candidate");
    assert_eq!(
        actions(&mut node),
        [
            send(&child, wire_frame(&offer(&origin(2)))),
            send(&child, wire_frame(&candidate(&origin(2)))),
            Action::Emit(Event::ChildConnected { id: origin(1) }),
        ]
    );
    assert_eq!(node.info().children, [origin(1)]);
}

#[test]
fn candidates_time_out_and_late_ones_are_closed() {
    let now = Instant::now();
    let mut node = node(1, true, false);
    node.on_request(offer(&origin(1)).into(), now);
    actions(&mut node);
    assert_eq!(node.poll_timeout(), Some(now + TIMEOUT));
    node.handle_timeout(now + TIMEOUT);
    assert_eq!(actions(&mut node), [Action::DropCandidate(origin(1))]);
    assert_eq!(
        node.candidate_connected(&origin(1), false, now + TIMEOUT),
        None
    );
    assert_eq!(node.poll_timeout(), None);
    node.on_request(offer(&origin(2)).into(), now);
    node.candidate_failed(&origin(2), &"ICE failed");
    assert_eq!(node.info().candidates, 0);
}

#[test]
fn the_parent_closes_and_rejoins_back_off() {
    let now = Instant::now();
    let mut node = node(1, false, false);
    let first = connect_parent(&mut node, "p", now);
    let second = connect_parent(&mut node, "q", now);
    node.link_closed(&first, now);
    assert_eq!(actions(&mut node), NONE);
    assert_eq!(node.info().parent.as_deref(), Some("q"));
    node.link_closed(&second, now);
    assert_eq!(
        actions(&mut node),
        [
            Action::Emit(Event::ParentClosed),
            Action::Rejoin {
                attempt: 1,
                delay: Duration::from_secs(1)
            },
        ]
    );
    assert_eq!(node.info().parent, None);
    node.rejoin_failed(2, "timeout".into());
    assert_eq!(
        actions(&mut node),
        [
            Action::Emit(Event::RejoinFailed {
                attempt: 2,
                error: "timeout".into()
            }),
            Action::Rejoin {
                attempt: 3,
                delay: Duration::from_secs(4)
            },
        ]
    );
    node.rejoin_failed(40, String::new());
    assert_eq!(
        actions(&mut node).last(),
        Some(&Action::Rejoin {
            attempt: 41,
            delay: Duration::from_secs(10)
        })
    );
}

#[test]
fn sends_need_a_connected_target() {
    let now = Instant::now();
    let mut node = node(2, false, false);
    assert_eq!(node.send(Target::Parent, "x".into()), Err(Error::NoParent));
    assert_eq!(
        node.send(Target::Child("nobody".into()), "x".into()),
        Err(Error::NoSuchChild("nobody".into()))
    );
    assert_eq!(node.send(Target::Children, "x".into()), Ok(()));
    assert_eq!(actions(&mut node), NONE);
    let parent = connect_parent(&mut node, "p", now);
    let kids = [
        add_child(&mut node, &origin(1), now),
        add_child(&mut node, &origin(2), now),
    ];
    assert_eq!(node.send(Target::Parent, "a".into()), Ok(()));
    assert_eq!(node.send(Target::Child(origin(2)), "b".into()), Ok(()));
    assert_eq!(node.send(Target::Children, "c".into()), Ok(()));
    assert_eq!(
        actions(&mut node),
        [
            send(&parent, "a"),
            send(&kids[1], "b"),
            send(&kids[0], "c"),
            send(&kids[1], "c"),
        ]
    );
    node.link_closed(&kids[0], now);
    assert_eq!(
        actions(&mut node),
        [Action::Emit(Event::ChildClosed { id: origin(1) })]
    );
    node.clear();
    assert_eq!(node.info().parent, None);
    assert!(node.info().children.is_empty());
}

#[test]
fn subtrees_are_reported_up_and_the_tree_shared_down() {
    let now = Instant::now();
    let due = now + DEBOUNCE;
    // An inner node reports its subtree, with its children's reports, to its parent.
    let mut inner = node(2, false, true);
    let parent = connect_parent(&mut inner, "p", now);
    let child = add_child(&mut inner, &origin(1), now);
    let report = json!({"subtree": {"name": "c", "children": []}});
    inner.on_message(&child, &data(&report), now);
    inner.on_message(&child, &data(&json!({"subtree": 5})), now);
    assert_eq!(actions(&mut inner), NONE, "reports are not delivered");
    assert_eq!(inner.poll_timeout(), Some(due));
    inner.handle_timeout(due);
    let subtree = json!({"name": "me", "children": [{"name": "c", "children": []}]});
    assert_eq!(
        actions(&mut inner),
        [send(&parent, wire::data(&json!({"subtree": subtree})))]
    );
    // The root's tree comes down as a broadcast: forwarded, and read as the tree.
    let tree = json!({"tree": {"name": "root", "children": [subtree]}});
    inner.on_message(&parent, &data(&json!({"broadcast": tree})), now);
    assert_eq!(
        actions(&mut inner),
        [
            send(&child, wire::data(&json!({"broadcast": tree}))),
            Action::Emit(Event::Tree(tree["tree"].clone())),
        ]
    );

    // The root shares the whole tree with everyone, itself included.
    let mut root = node(2, true, true);
    let child = add_child(&mut root, &origin(1), now);
    root.handle_timeout(due);
    let tree = json!({"name": "me", "children": [{"name": format!("?{}", &origin(1)[..8]), "children": []}]});
    assert_eq!(
        actions(&mut root),
        [
            send(&child, wire::data(&json!({"broadcast": {"tree": tree}}))),
            Action::Emit(Event::Tree(tree)),
        ]
    );
}

#[test]
fn reports_are_ignored_with_topology_off() {
    let now = Instant::now();
    let mut node = node(1, true, false);
    let child = add_child(&mut node, &origin(1), now);
    node.on_message(&child, &data(&json!({"subtree": 5})), now);
    assert_eq!(node.poll_timeout(), None);
    assert_eq!(actions(&mut node), NONE);
}

const BEAT: Duration = Duration::from_millis(250);
const DEAD: Duration = Duration::from_secs(1);

fn beating(max_degree: usize, is_root: bool) -> NodeState {
    let options = NodeOptions {
        max_degree,
        request_timeout: TIMEOUT,
        heartbeat_interval: Some(BEAT),
        heartbeat_timeout: DEAD,
        ..NodeOptions::default()
    };
    NodeState::new(42, "me".into(), is_root, &options)
}

fn heartbeat(link: &Link) -> Action {
    send(link, wire::HEARTBEAT)
}

/// Runs the node's timers up to `until`, as the task does, and returns every action.
fn run_until(node: &mut NodeState, until: Instant) -> Vec<Action> {
    let mut all = Vec::new();
    while let Some(at) = node.poll_timeout().filter(|at| *at <= until) {
        node.handle_timeout(at);
        all.extend(actions(node));
    }
    all
}

#[tokio::test(start_paused = true)]
async fn a_parent_beats_for_a_child_that_supports_it_and_drops_it_when_silent() {
    let t0 = Instant::now();
    let mut root = beating(2, true);
    // A child whose channel label said "heartbeats": the first one goes at once.
    root.on_request(offer(&origin(1)).into(), t0);
    actions(&mut root);
    let child = root
        .candidate_connected(&origin(1), true, t0)
        .expect("a candidate");
    assert_eq!(
        actions(&mut root),
        [
            heartbeat(&child),
            Action::Emit(Event::ChildConnected { id: origin(1) })
        ]
    );
    // A child that did not say so (a JS node) never sees one.
    let js = add_child(&mut root, &origin(2), t0);
    tokio::time::advance(Duration::from_millis(600)).await;
    let now = Instant::now();
    assert_eq!(
        run_until(&mut root, now),
        [heartbeat(&child), heartbeat(&child)]
    );
    // The child answers: not quiet, requests for its slot are forwarded.
    root.on_message(&child, wire::HEARTBEAT.as_bytes(), now);
    assert_eq!(actions(&mut root), NONE);
    // Silent for more than 1.5 intervals: quiet. A request delegated to it waits.
    tokio::time::advance(Duration::from_millis(400)).await;
    let now = Instant::now();
    assert_eq!(
        run_until(&mut root, now),
        [heartbeat(&child), heartbeat(&child)]
    );
    let waiting = (3..200)
        .map(origin)
        .find(|o| slot_for(o, 42, 2) == 0)
        .expect("an origin for slot 0");
    root.on_request(offer(&waiting).into(), now);
    assert_eq!(actions(&mut root), NONE);
    assert_eq!(root.info().stored, 1);
    // Heard again: the held request goes to it first.
    root.on_message(&child, wire::HEARTBEAT.as_bytes(), now);
    assert_eq!(
        actions(&mut root),
        [send(&child, wire_frame(&offer(&waiting)))]
    );
    // Silent for the timeout: closed as dead; the JS child stays.
    let quiet_at = now + BEAT.mul_f64(1.5) + Duration::from_millis(1);
    tokio::time::advance(quiet_at - now).await;
    root.on_request(offer(&waiting).into(), Instant::now());
    assert_eq!(actions(&mut root), NONE);
    tokio::time::advance(DEAD).await;
    let all = run_until(&mut root, Instant::now());
    assert_eq!(
        all[all.len() - 3..],
        [
            Action::CloseLink(child.clone()),
            Action::Emit(Event::ChildClosed { id: origin(1) }),
            // The request held for it is decided again: there is room now.
            Action::Answer(offer(&waiting)),
        ]
    );
    assert!(all[..all.len() - 3].iter().all(|a| *a == heartbeat(&child)));
    assert_eq!(root.info().children, [origin(2)]);
    // A late close of the dead link changes nothing.
    root.link_closed(&child, Instant::now());
    assert_eq!(actions(&mut root), NONE);
    tokio::time::advance(Duration::from_secs(60)).await;
    run_until(&mut root, Instant::now());
    assert!(root.info().children.contains(&origin(2)), "{js:?} stays");
}

#[tokio::test(start_paused = true)]
async fn a_child_beats_once_its_parent_does_and_rejoins_at_once_when_it_stops() {
    let t0 = Instant::now();
    let mut node = beating(2, false);
    let parent = connect_parent(&mut node, "p", t0);
    // Until the parent's first heartbeat (a JS parent never sends one), nothing.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(run_until(&mut node, Instant::now()), NONE);
    node.on_message(&parent, wire::HEARTBEAT.as_bytes(), Instant::now());
    assert_eq!(actions(&mut node), [heartbeat(&parent)]);
    let since = Instant::now();
    // Data counts as a sign of life too.
    tokio::time::advance(Duration::from_millis(900)).await;
    node.on_message(&parent, &data(&json!(1)), Instant::now());
    actions(&mut node);
    tokio::time::advance(Duration::from_millis(900)).await;
    let all = run_until(&mut node, Instant::now());
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(all.iter().all(|a| *a == heartbeat(&parent)));
    // Silent for the timeout: closed, and re-joined without waiting.
    tokio::time::advance(Duration::from_millis(100)).await;
    let all = run_until(&mut node, Instant::now());
    assert_eq!(
        all[all.len() - 3..],
        [
            Action::CloseLink(parent.clone()),
            Action::Emit(Event::ParentClosed),
            Action::Rejoin {
                attempt: 1,
                delay: Duration::ZERO
            },
        ]
    );
    assert_eq!(Instant::now() - since, Duration::from_millis(1900));
    assert_eq!(node.info().parent, None);
    assert_eq!(node.poll_timeout(), None);
}

#[tokio::test(start_paused = true)]
async fn without_heartbeats_nothing_is_watched() {
    let now = Instant::now();
    let options = NodeOptions {
        heartbeat_interval: None,
        ..NodeOptions::default()
    };
    let mut node = NodeState::new(42, "me".into(), false, &options);
    let parent = connect_parent(&mut node, "p", now);
    node.on_request(offer(&origin(1)).into(), now);
    actions(&mut node);
    node.candidate_connected(&origin(1), true, now)
        .expect("a candidate");
    assert_eq!(
        actions(&mut node),
        [Action::Emit(Event::ChildConnected { id: origin(1) })]
    );
    node.on_message(&parent, wire::HEARTBEAT.as_bytes(), now);
    assert_eq!(actions(&mut node), NONE);
    assert_eq!(node.poll_timeout(), None);
}

#[test]
fn a_large_tree_is_shared_less_often_but_the_root_sees_every_change() {
    let t0 = Instant::now();
    let mut root = node(2, true, true);
    let child = add_child(&mut root, &origin(1), t0);
    // A child reports a subtree of 199 nodes: a tree of 200, shared every 400 ms.
    let big = json!({"name": "c", "children": vec![json!({"name": "x", "children": []}); 198]});
    root.on_message(&child, &data(&json!({"subtree": big})), t0);
    let first = t0 + DEBOUNCE;
    root.handle_timeout(first);
    let shared = actions(&mut root);
    assert_eq!(shared.len(), 2, "a broadcast and the root's own picture");
    assert!(matches!(&shared[0], Action::Send { link, .. } if *link == child));
    // A change 100 ms later: the root sees it at once, everyone else 400 ms after the
    // first picture.
    let small = json!({"name": "c", "children": []});
    root.on_message(&child, &data(&json!({"subtree": small})), first);
    root.handle_timeout(first + DEBOUNCE);
    let tree = json!({"name": "me", "children": [small]});
    assert_eq!(
        actions(&mut root),
        [Action::Emit(Event::Tree(tree.clone()))]
    );
    let next = first + Duration::from_millis(400);
    assert_eq!(root.poll_timeout(), Some(next));
    root.handle_timeout(next);
    assert_eq!(
        actions(&mut root),
        [send(
            &child,
            wire::data(&json!({"broadcast": {"tree": tree}}))
        )]
    );
    assert_eq!(root.poll_timeout(), None);
}
