//! Several simulated instances on one in-process backplane: the relay rules across
//! instances, root leases, outages and deaths, with paused time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bootstrap_protocol::PeerId;
use bootstrap_ws::{Decoder, OpCode, encode_frame};
use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::handle::Inbox;
use crate::handler::Handler;
use crate::queue::Received;
use crate::route::DEFAULT_OVERLAY;
use crate::state::{AppState, Registration, Role};

const LEASE: Duration = Duration::from_secs(3);

async fn instance(hub: &InProcess) -> (AppState, InProcess) {
    let mut config = Config::new("s");
    config.seed = Some(u64::from(rand_seed()));
    let backplane = hub.instance();
    let state = AppState::clustered(config, Arc::new(backplane.clone()), LEASE)
        .await
        .expect("joins");
    (state, backplane)
}

/// Three instances on `hub`.
async fn three(hub: &InProcess) -> (AppState, AppState, AppState) {
    (
        instance(hub).await.0,
        instance(hub).await.0,
        instance(hub).await.0,
    )
}

fn rand_seed() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn overlay(state: &AppState) -> Arc<crate::state::Overlay> {
    state.0.overlay(DEFAULT_OVERLAY).expect("default overlay")
}

fn root(state: &AppState) -> (Registration, Inbox) {
    let (registration, rx, _) = state.0.register_root(&overlay(state), false).expect("open");
    (registration, rx)
}

/// A standby root registered on `state`.
fn standby(state: &AppState) -> (Registration, Inbox) {
    let (registration, rx, _) = state.0.register_root(&overlay(state), true).expect("open");
    (registration, rx)
}

fn join(state: &AppState) -> (Handler, PeerId, Inbox) {
    let (registration, rx) = state.0.admit_join(&overlay(state)).expect("room");
    let Role::Join(id) = registration.role() else {
        unreachable!("admitted as /join")
    };
    (Handler::new(registration, Instant::now()), id, rx)
}

fn send(handler: &mut Handler, text: &str) {
    let mut bytes = Vec::new();
    encode_frame(
        &mut bytes,
        OpCode::Text,
        text.as_bytes(),
        Some([1, 2, 3, 4]),
    );
    let mut decoder = Decoder::new(1 << 16);
    let mut out = Vec::new();
    assert_eq!(
        handler.on_bytes(&mut decoder, &mut bytes, &mut out, Instant::now()),
        None
    );
}

fn next(rx: &mut Inbox) -> Option<Received<Outgoing, Command>> {
    let waker = std::task::Waker::noop();
    match rx.poll_recv(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(received) => received,
        std::task::Poll::Pending => None,
    }
}

fn text(rx: &mut Inbox) -> Option<String> {
    match next(rx) {
        Some(Received::Message(message)) => Some(message.text),
        _ => None,
    }
}

/// Lets the inbox and lease tasks run (paused time moves on by itself).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn stat(state: &AppState, counter: fn(&BackplaneStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    let cluster = state.0.cluster.as_ref().expect("clustered");
    counter(&cluster.stats).load(Ordering::Relaxed)
}

fn root_instance(state: &AppState) -> Option<String> {
    state.health().overlays[0]
        .root_instance
        .clone()
        .expect("clustered")
}

#[tokio::test(start_paused = true)]
async fn a_handshake_crosses_three_instances_verbatim_with_one_publish_per_message() {
    let hub = InProcess::new();
    let (a, b, c) = three(&hub).await;
    let (_root, mut root_rx) = root(&a);
    settle().await;
    assert_eq!(root_instance(&c), a.instance());
    // Ids carry their instance's tag.
    let (mut newcomer, newcomer_id, mut newcomer_rx) = join(&b);
    let (mut answerer, answerer_id, mut answerer_rx) = join(&c);
    assert_eq!(Some(format!("{:04x}", newcomer_id.tag())), b.instance());
    assert_eq!(Some(format!("{:04x}", answerer_id.tag())), c.instance());

    // Newcomer on B -> root on A, origin set by B, everything else verbatim and in order.
    for rank in 0..3 {
        send(
            &mut newcomer,
            &format!(
                r#"{{"origin":null,"destination":null,"signal":{{"n":{rank}}},"rank":{rank},"extra":"é"}}"#
            ),
        );
    }
    settle().await;
    for rank in 0..3 {
        assert_eq!(
            text(&mut root_rx).expect("reached the root"),
            format!(
                r#"{{"origin":"{newcomer_id}","destination":null,"signal":{{"n":{rank}}},"rank":{rank},"extra":"é"}}"#
            )
        );
    }
    // Answerer on C -> newcomer on B; newcomer -> answerer directly.
    send(
        &mut answerer,
        &format!(
            r#"{{"origin":null,"destination":"{newcomer_id}","signal":{{"type":"answer"}},"rank":0}}"#
        ),
    );
    send(
        &mut newcomer,
        &format!(r#"{{"origin":null,"destination":"{answerer_id}","signal":{{"c":1}},"rank":3}}"#),
    );
    settle().await;
    assert_eq!(
        text(&mut newcomer_rx).expect("answer arrived"),
        format!(
            r#"{{"origin":"{answerer_id}","destination":"{newcomer_id}","signal":{{"type":"answer"}},"rank":0}}"#
        )
    );
    assert_eq!(
        text(&mut answerer_rx).expect("candidate arrived"),
        format!(
            r#"{{"origin":"{newcomer_id}","destination":"{answerer_id}","signal":{{"c":1}},"rank":3}}"#
        )
    );
    // One publish per message, received only by the instance that needed it.
    assert_eq!(stat(&b, |s| &s.published), 4);
    assert_eq!(stat(&c, |s| &s.published), 1);
    assert_eq!(stat(&a, |s| &s.received), 3);
    assert_eq!(stat(&b, |s| &s.received), 1);
    assert_eq!(stat(&c, |s| &s.received), 1);
    assert_eq!(a.health().stats.relayed_to_root, 3);
    assert!(text(&mut root_rx).is_none(), "exactly once");
}

#[tokio::test(start_paused = true)]
async fn the_newest_root_wins_across_instances_and_the_old_one_is_closed_as_replaced() {
    let hub = InProcess::new();
    let (a, b, c) = three(&hub).await;
    let (_first, mut first_rx) = root(&a);
    settle().await;
    let (_second, mut second_rx) = root(&b);
    settle().await;
    assert_eq!(
        next(&mut first_rx),
        Some(Received::Control(Command::Replaced))
    );
    assert_eq!(root_instance(&c), b.instance());
    // The replaced root leaving does not take the new lease with it.
    drop(_first);
    settle().await;
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(root_instance(&c), b.instance());
    assert_eq!(root_instance(&a), b.instance());
    let (mut newcomer, _, _rx) = join(&c);
    send(&mut newcomer, r#"{"signal":1}"#);
    settle().await;
    assert!(text(&mut second_rx).is_some());
}

#[tokio::test(start_paused = true)]
async fn destinations_that_exist_nowhere_are_dropped_and_counted() {
    let hub = InProcess::new();
    let (a, _) = instance(&hub).await;
    let (b, _) = instance(&hub).await;
    let (mut sender, _, _rx) = join(&a);
    let (_peer, peer_id, _peer_rx) = join(&b);
    // An id of B that is not open, and an id of an instance that does not exist.
    let closed = format!("{}{}", &peer_id.as_str()[..4], "0".repeat(28));
    let nowhere = format!("ffff{}", "0".repeat(28));
    for to in [&closed, &nowhere] {
        send(
            &mut sender,
            &format!(r#"{{"destination":"{to}","signal":1}}"#),
        );
    }
    settle().await;
    assert_eq!(stat(&a, |s| &s.undeliverable), 1, "no instance ffff");
    assert_eq!(stat(&b, |s| &s.undeliverable), 1, "no such socket on B");
    assert_eq!(b.health().stats.dropped_unknown_destination, 1);
    // No root anywhere: dropped and counted on the sender's instance.
    send(&mut sender, r#"{"signal":1}"#);
    assert_eq!(a.health().stats.dropped_no_root, 1);
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_keeps_local_joins_drops_remote_ones_and_recovers() {
    let hub = InProcess::new();
    let (a, _) = instance(&hub).await;
    let (b, _) = instance(&hub).await;
    let (_root, mut root_rx) = root(&a);
    settle().await;
    let (mut local, _, _l) = join(&a);
    let (mut remote, _, _r) = join(&b);
    hub.set_reachable(false);
    assert!(!a.is_ready(), "/readyz turns 503");
    send(&mut local, r#"{"signal":"local"}"#);
    send(&mut remote, r#"{"signal":"remote"}"#);
    settle().await;
    assert!(text(&mut root_rx).is_some_and(|t| t.contains("local")));
    assert!(text(&mut root_rx).is_none());
    assert_eq!(stat(&b, |s| &s.dropped_unreachable), 1);
    // Renewals fail meanwhile, but the lease is kept and routing resumes.
    tokio::time::sleep(LEASE * 2).await;
    hub.set_reachable(true);
    assert!(a.is_ready());
    tokio::time::sleep(LEASE).await;
    send(&mut remote, r#"{"signal":"again"}"#);
    settle().await;
    assert!(text(&mut root_rx).is_some_and(|t| t.contains("again")));
}

#[tokio::test(start_paused = true)]
async fn a_dead_instances_root_lease_lapses_and_a_new_root_takes_over() {
    let hub = InProcess::new();
    let (a, a_backplane) = instance(&hub).await;
    let (b, _) = instance(&hub).await;
    let (c, _) = instance(&hub).await;
    let (_root, _root_rx) = root(&a);
    settle().await;
    assert_eq!(root_instance(&c), a.instance());
    a_backplane.kill();
    // Lapses within the lease's time to live plus one read period.
    tokio::time::sleep(LEASE + LEASE / 3 + Duration::from_millis(100)).await;
    assert_eq!(root_instance(&c), None);
    let (_new, mut new_rx) = root(&b);
    settle().await;
    let (mut newcomer, _, _rx) = join(&c);
    send(&mut newcomer, r#"{"signal":1}"#);
    settle().await;
    assert!(text(&mut new_rx).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_graceful_shutdown_hands_the_root_lease_over_at_once() {
    let hub = InProcess::new();
    let (a, _) = instance(&hub).await;
    let (b, _) = instance(&hub).await;
    let (_root, mut root_rx) = root(&a);
    settle().await;
    assert_eq!(root_instance(&b), a.instance());
    hand_over(&a.0).await;
    assert_eq!(
        next(&mut root_rx),
        Some(Received::Control(Command::Shutdown))
    );
    settle().await; // far less than the lease
    assert_eq!(root_instance(&b), None);
    drop(_root); // the root's socket closes (1001) and it reconnects elsewhere
    let (_new, _) = root(&b);
    settle().await;
    assert_eq!(root_instance(&a), b.instance());
}

#[tokio::test(start_paused = true)]
async fn a_standby_on_another_instance_takes_over_when_the_root_leaves_and_only_it() {
    use bootstrap_protocol::paths::{PROMOTED, STANDBY};
    let hub = InProcess::new();
    let (a, b, c) = three(&hub).await;
    let (active, _active_rx) = root(&a);
    settle().await;
    // B and C know the root is on A: their standbys wait.
    let (_b_standby, mut b_rx) = standby(&b);
    let (a_standby, mut a_rx) = standby(&a);
    assert_eq!(text(&mut b_rx).as_deref(), Some(STANDBY));
    assert_eq!(text(&mut a_rx).as_deref(), Some(STANDBY));
    // The root on A leaves: A's own standby takes over and claims the lease; B hears no
    // "gone" and keeps its standby waiting.
    drop(active);
    assert_eq!(text(&mut a_rx).as_deref(), Some(PROMOTED));
    settle().await;
    assert_eq!(text(&mut b_rx), None, "B's standby still waits");
    assert_eq!(root_instance(&c), a.instance());
    // A's promoted root leaves with no standby left on A: B's standby takes over.
    drop(a_standby);
    settle().await;
    assert_eq!(text(&mut b_rx).as_deref(), Some(PROMOTED));
    settle().await;
    assert_eq!(root_instance(&c), b.instance());
    // A newcomer on C reaches the promoted root on B.
    let (mut newcomer, _, _newcomer_rx) = join(&c);
    send(&mut newcomer, r#"{"signal":"offer"}"#);
    settle().await;
    let relayed = text(&mut b_rx).expect("the join request reached B");
    assert!(relayed.contains("offer"), "{relayed}");
}

#[tokio::test(start_paused = true)]
async fn when_the_root_is_gone_everywhere_exactly_one_standby_takes_over() {
    use bootstrap_protocol::paths::{PROMOTED, STANDBY};
    let hub = InProcess::new();
    let (a, b, c) = three(&hub).await;
    let (active, _active_rx) = root(&a);
    settle().await;
    let (_b_standby, mut b_rx) = standby(&b);
    let (_c_standby, mut c_rx) = standby(&c);
    settle().await;
    assert_eq!(text(&mut b_rx).as_deref(), Some(STANDBY));
    assert_eq!(text(&mut c_rx).as_deref(), Some(STANDBY));
    // A's root leaves with no standby on A: B and C both hear it is gone; only the one
    // that takes the free lease first is promoted.
    drop(active);
    settle().await;
    settle().await;
    let promoted = [text(&mut b_rx), text(&mut c_rx)];
    let winners = promoted
        .iter()
        .filter(|t| t.as_deref() == Some(PROMOTED))
        .count();
    assert_eq!(winners, 1, "{promoted:?}");
    let winner = if promoted[0].is_some() { &b } else { &c };
    assert_eq!(root_instance(&a), winner.instance());
    // Nobody was closed as replaced.
    assert!(next(&mut b_rx).is_none() && next(&mut c_rx).is_none());
}
