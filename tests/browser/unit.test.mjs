// Unit tests of the browser modules' IO-free logic, with Node's built-in test runner:
// `node --test unit.test.mjs` (run by bin/bootstrap-node/tests/browser.rs). The vectors
// and scenarios mirror the Rust crates' own unit tests, so both sides agree on the wire.

import assert from 'node:assert/strict';
import { mock, test } from 'node:test';

import {
  BEARER_SUBPROTOCOL, BootstrapError, Client, ClosedError, DEFAULT_OVERLAY, Dropped, InvalidAddressError,
  InvalidOverlayError, InvalidSecretError, InvalidTokenError, JoinRefusedError, Negotiation, NoAnswerError,
  Refusal, WrongOriginError, candidateSignal, isOverlayName, parseServerAddress, randomLabel, redactAddress,
  refusalFromHealth, signalKind,
} from '../../web/bootstrap.js';
import {
  HEARTBEAT_LABEL, Liveness, MAX_STORED_PER_SLOT, Node, NodeCore, PARENT_LINK, REPORT_DEBOUNCE_MS, Topology,
  childLink, dataMessage, hash31, heartbeatMessage, isTree, joinRequestMessage, linkChild, parseChannelMessage,
  slotFor, subtreeOf, treeOf, unwrapDelivery,
} from '../../web/overlay.js';
import { demoOptions, failureMessage, layoutTree, parentName, roomLink, treeSize } from '../../web/demo.js';

const ANSWERER = 'a'.repeat(32);
const NEWCOMER = 'b'.repeat(32);
const OTHER = 'c'.repeat(32);
const candidate = (n) => ({ candidate: `candidate:${n} 1 udp 1 127.0.0.1 ${n} typ host`, sdpMLineIndex: 0, sdpMid: '0' });
const relayed = (origin, signal, destination = null) => ({ origin, destination, signal, rank: 0 });

test('hash31 matches the JS vectors', () => {
  const vectors = [[0, 1800296743], [1, 881230262], [42, 1128512368], [4294967295, 2120532354], [123456789, 1504419361]];
  for (const [input, expected] of vectors) assert.equal(hash31(input), expected, `hash31(${input})`);
});

test('delegation slots are deterministic, in range, and parse like parseInt', () => {
  const origin = '96e030c4f365189090174452ad4ecd06';
  assert.equal(slotFor(origin, 123456, 3), hash31(0x96e030 ^ 123456) % 3);
  assert.equal(slotFor('zz', 7, 5), hash31(7) % 5);
  assert.equal(slotFor('ab-zzz', 7, 5), hash31(0xab ^ 7) % 5);
  assert.equal(slotFor('', 1, 0), 0);
  const used = new Set(Array.from({ length: 64 }, (_, i) => slotFor((i * 0x31337).toString(16).padStart(6, '0'), 7, 4)));
  assert.equal(used.size, 4);
});

test('data-channel messages have the JS shapes', () => {
  const text = dataMessage({ hello: [1, 'two'] });
  assert.equal(text, '{"type":"DATA","data":{"hello":[1,"two"]}}');
  assert.deepEqual(parseChannelMessage(text), { kind: 'data', data: { hello: [1, 'two'] } });
  const request = { origin: '484c', destination: null, signal: { type: 'offer', sdp: 'x' }, rank: 0 };
  const forwarded = joinRequestMessage(request);
  assert.equal(forwarded, '{"origin":"484c","destination":null,"signal":{"type":"offer","sdp":"x"},"rank":0,"type":"JOIN-REQUEST"}');
  assert.deepEqual(parseChannelMessage(forwarded), { kind: 'join-request', request });
  assert.equal(heartbeatMessage(), '{"type":"HEARTBEAT"}');
  assert.deepEqual(parseChannelMessage(heartbeatMessage()), { kind: 'heartbeat' });
  for (const bad of ['nope', 'null', '[1]', '{"type":"PING"}', '{}', '{"type":5}']) {
    assert.equal(parseChannelMessage(bad).kind, 'invalid', bad);
  }
});

test('deliveries, trees and subtree reports are single-key objects', () => {
  assert.deepEqual(unwrapDelivery({ broadcast: { x: 1 } }), { delivery: 'broadcast', data: { x: 1 } });
  assert.deepEqual(unwrapDelivery({ 'to-root': 'hi' }), { delivery: 'to-root', data: 'hi' });
  assert.deepEqual(unwrapDelivery({ broadcast: 1, x: 2 }), { delivery: 'direct', data: { broadcast: 1, x: 2 } });
  assert.deepEqual(unwrapDelivery(5), { delivery: 'direct', data: 5 });
  const tree = { name: 'r', children: [] };
  assert.deepEqual(treeOf('broadcast', { tree }), tree);
  assert.equal(treeOf('direct', { tree }), undefined);
  assert.equal(subtreeOf({ subtree: 1 }), 1);
  assert.equal(subtreeOf({ subtree: 1, x: 2 }), undefined);
});

test('topology reports changes once, after the debounce', () => {
  const t0 = 1000;
  const topology = new Topology('me');
  assert.equal(topology.poll(t0, []), null, 'nothing due');
  topology.reset(t0);
  assert.equal(topology.poll(t0, []), null, 'debounced');
  assert.deepEqual(topology.poll(t0 + REPORT_DEBOUNCE_MS, []), { name: 'me', children: [] });
  topology.touch(t0 + 200);
  assert.equal(topology.poll(t0 + 400, []), null, 'unchanged');
});

test('topology composes reports and placeholders, and rejects malformed reports', () => {
  const topology = new Topology('root');
  const report = { name: 'a', children: [{ name: 'b', children: [] }] };
  assert.ok(topology.childReport('aaaaaaaaaaaa', report, 0));
  assert.deepEqual(topology.poll(REPORT_DEBOUNCE_MS, ['aaaaaaaaaaaa', '0123456789abcdef']), {
    name: 'root',
    children: [report, { name: '?01234567', children: [] }],
  });
  for (const bad of [5, { name: 1, children: [] }, { name: 'a' }, { name: 'a', children: [1] }]) {
    assert.ok(!topology.childReport('c', bad, 0));
  }
  let deep = { name: 'leaf', children: [] };
  for (let i = 0; i < 100; i += 1) deep = { name: 'n', children: [deep] };
  assert.ok(!isTree(deep));
});

test('a node answers while it has room, then delegates or stores', () => {
  const origin = (i) => (i * 0x10001).toString(16).padStart(6, '0') + '0'.repeat(26);
  const core = new NodeCore(42, 2, 30000);
  assert.deepEqual(core.onRequest(origin(1), true, 'r1', 0), { kind: 'answer' });
  assert.deepEqual(core.onRequest(origin(1), false, 'r11', 0), { kind: 'to-candidate' });
  assert.deepEqual(core.onRequest(origin(2), true, 'r2', 0), { kind: 'answer' });
  const stored = core.onRequest(origin(3), true, 'r3', 0);
  assert.deepEqual(stored, { kind: 'stored', slot: slotFor(origin(3), 42, 2) });
  // A candidate-only signal never creates a phantom child.
  assert.equal(new NodeCore(1, 3, 30000).onRequest(origin(5), false, 'x', 0).kind, 'stored');
  assert.deepEqual(new NodeCore(1, 0, 30000).onRequest(origin(5), true, 'x', 0), { kind: 'dropped', reason: 'UnknownOrigin' });

  // Find an origin delegated to slot 0, the slot the first child takes.
  const waiting = Array.from({ length: 97 }, (_, i) => origin(i + 3)).find((o) => slotFor(o, 42, 2) === 0);
  const fresh = new NodeCore(42, 2, 30000);
  fresh.onRequest(origin(1), true, 1, 0);
  fresh.onRequest(origin(2), true, 2, 0);
  fresh.onRequest(waiting, true, 7, 0);
  fresh.onRequest(waiting, false, 8, 0);
  assert.deepEqual(fresh.candidateConnected(origin(1)), { slot: 0, stored: [7, 8] });
  assert.deepEqual(fresh.onRequest(waiting, false, 9, 0), { kind: 'forward', child: origin(1) });
  assert.deepEqual(fresh.onRequest(origin(1), false, 10, 0), { kind: 'dropped', reason: 'AlreadyChild' });
  assert.equal(fresh.childClosed(origin(1)), 0);
  assert.deepEqual(fresh.children(), []);
});

test('candidates and stored requests expire; the store is bounded', () => {
  const core = new NodeCore(42, 1, 30000);
  core.onRequest('000001', true, 1, 0);
  core.onRequest('000002', true, 2, 1000);
  assert.equal(core.nextDeadline(), 30000);
  assert.deepEqual(core.expire(29999), { candidates: [], requests: 0 });
  assert.deepEqual(core.expire(30000), { candidates: ['000001'], requests: 0 });
  assert.deepEqual(core.expire(31000), { candidates: [], requests: 1 });
  assert.ok(core.hasRoom());
  assert.equal(core.candidateConnected('000001'), null);
  const full = new NodeCore(3, 1, 30000);
  full.onRequest('000001', true, 0, 0);
  for (let i = 0; i < MAX_STORED_PER_SLOT; i += 1) full.onRequest('000002', false, i, 0);
  assert.deepEqual(full.onRequest('000002', false, 0, 0), { kind: 'dropped', reason: 'StoreFull' });
});

test('a quiet child\'s requests wait at its parent, in order, until it speaks or goes', () => {
  const core = new NodeCore(42, 1, 30000);
  core.onRequest('000001', true, 'child', 0);
  core.candidateConnected('000001');
  let quiet = true;
  const isQuiet = (child) => child === '000001' && quiet;
  assert.deepEqual(core.onRequest('000002', true, 'r1', 0, isQuiet), { kind: 'stored', slot: 0 });
  // Once the child speaks again, a later request still waits behind the held ones.
  quiet = false;
  assert.deepEqual(core.onRequest('000002', false, 'r2', 0, isQuiet), { kind: 'stored', slot: 0 });
  assert.equal(core.slotOf('000001'), 0);
  assert.equal(core.slotOf('000009'), null);
  assert.deepEqual(core.takeStored(0), ['r1', 'r2']);
  assert.deepEqual(core.onRequest('000002', false, 'r3', 0, isQuiet), { kind: 'forward', child: '000001' });
});

// The same scenarios as crates/overlay/src/liveness.rs's tests (250 ms, 1 s).
const SETTINGS = { interval: 250, timeout: 1000 };

test('heartbeats are due at once, then every interval', () => {
  const liveness = new Liveness(SETTINGS);
  assert.equal(liveness.nextDeadline(), null);
  assert.ok(liveness.watch(childLink('a'), 0));
  assert.ok(!liveness.watch(childLink('a'), 0));
  assert.ok(liveness.watch(PARENT_LINK, 0));
  assert.deepEqual(liveness.due(0), [PARENT_LINK, childLink('a')]);
  liveness.sent(PARENT_LINK, 0);
  liveness.sent(childLink('a'), 0);
  assert.equal(liveness.nextDeadline(), 250);
  liveness.sent(childLink('a'), 200);
  assert.deepEqual(liveness.due(250), [PARENT_LINK]);
  assert.ok(liveness.isDue(PARENT_LINK, 250) && !liveness.isDue(childLink('a'), 250));
  assert.deepEqual(liveness.due(450), [PARENT_LINK, childLink('a')]);
  assert.equal(linkChild(childLink('a')), 'a');
  assert.equal(linkChild(PARENT_LINK), null);
});

test('a starved page does not count its own lateness as silence', () => {
  const liveness = new Liveness(SETTINGS);
  liveness.watch(childLink('a'), 0);
  assert.deepEqual(liveness.takeDead(250), []);
  // The next check comes 3 s late (a throttled hidden tab): only 500 ms count as silence.
  assert.deepEqual(liveness.takeDead(3500), []);
  assert.deepEqual(liveness.takeDead(3750), []);
  assert.deepEqual(liveness.takeDead(4000), [childLink('a')]);
});

test('silent links turn quiet, then dead', () => {
  const liveness = new Liveness(SETTINGS);
  liveness.watch(childLink('a'), 0);
  liveness.watch(childLink('b'), 0);
  liveness.heard(childLink('b'), 300);
  assert.ok(!liveness.isQuiet(childLink('a'), 375));
  assert.ok(liveness.isQuiet(childLink('a'), 376));
  assert.ok(!liveness.isQuiet(childLink('b'), 376));
  assert.ok(!liveness.isQuiet(childLink('unknown'), 5000));
  // Heard late (an earlier time than the last) changes nothing.
  liveness.heard(childLink('b'), 100);
  assert.deepEqual(liveness.takeDead(999), []);
  assert.deepEqual(liveness.takeDead(1000), [childLink('a')]);
  assert.ok(!liveness.isWatched(childLink('a')));
  assert.deepEqual(liveness.takeDead(1250), []);
  assert.deepEqual(liveness.takeDead(1300), [childLink('b')]);
  assert.equal(liveness.nextDeadline(), null);
});

/** A connected data channel as `Peer` shows it: records what is sent. */
class FakePeer extends EventTarget {
  constructor(remoteId, label) {
    super();
    this.remoteId = remoteId;
    this.localId = 'me';
    this.label = label;
    this.sent = [];
    this.closed = false;
  }

  send(text) {
    if (this.closed) throw new ClosedError();
    this.sent.push(text);
  }

  receive(text) {
    this.dispatchEvent(new CustomEvent('message', { detail: text }));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.dispatchEvent(new CustomEvent('close', { detail: 'local' }));
  }

  heartbeats() {
    return this.sent.filter((text) => text === heartbeatMessage()).length;
  }
}

/** A `Client` whose joins connect to the next of `parents` and whose answers connect
 * to `childPeer(origin)`; it records the joins' options. */
function fakeClient(parents, childPeer) {
  return {
    options: {},
    overlay: 'default',
    joins: [],
    async join(options = {}) {
      this.joins.push(options);
      const parent = parents.shift();
      if (!parent) throw new Error('no parent left');
      return parent;
    },
    answer(request) {
      return { connected: Promise.resolve(childPeer(request.origin)), signal() {}, close() {} };
    },
  };
}

/** Advances the mocked clock in 50 ms steps: one big tick would run every timer at its
 * end, which `Liveness` rightly takes for a starved page. */
function advance(ms) {
  for (let left = ms; left > 0; left -= 50) mock.timers.tick(Math.min(50, left));
}

/** Lets pending promise callbacks run (timers are mocked; setImmediate is not). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A join request from the parent for the newcomer `origin`. */
const offerFrom = (origin) => joinRequestMessage(relayed(origin, { type: 'offer', sdp: 'v=0' }));

test('a node heartbeats with its parent once the parent starts, and re-joins at once when it goes silent', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const first = new FakePeer('p1', HEARTBEAT_LABEL);
  const second = new FakePeer('p2', HEARTBEAT_LABEL);
  const client = fakeClient([first, second], () => null);
  const node = await Node.join(client, { name: 'n' });
  const seen = [];
  for (const type of ['data', 'parent-close', 'parent-connect']) node.addEventListener(type, () => seen.push(type));
  assert.deepEqual(client.joins, [{ label: HEARTBEAT_LABEL }]);
  // A parent that never sends one (a JS node) gets none.
  advance(2000);
  assert.equal(first.heartbeats(), 0);
  assert.equal(node.info().state, 'connected');
  // Its first heartbeat is answered at once and never delivered.
  first.receive(heartbeatMessage());
  assert.equal(first.heartbeats(), 1);
  advance(250);
  assert.equal(first.heartbeats(), 2);
  // Any message is a sign of life.
  advance(500);
  first.receive(dataMessage('hello'));
  await settle();
  advance(900);
  assert.equal(node.info().state, 'connected');
  assert.deepEqual(seen, ['data']);
  // Silent for the timeout: closed, and re-joined with no delay.
  advance(100);
  assert.ok(first.closed);
  assert.deepEqual(seen, ['data', 'parent-close']);
  mock.timers.tick(0);
  await settle();
  assert.deepEqual(client.joins, [{ label: HEARTBEAT_LABEL }, { label: HEARTBEAT_LABEL }]);
  assert.equal(node.info().parent, 'p2');
  assert.deepEqual(seen, ['data', 'parent-close', 'parent-connect']);
  node.close();
});

test('a parent heartbeats only with children whose label says they support it', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const parent = new FakePeer('p', HEARTBEAT_LABEL);
  const children = {
    [ANSWERER]: new FakePeer(ANSWERER, HEARTBEAT_LABEL),
    // A JS node: 40 random hex characters, and it throws on an unknown type.
    [NEWCOMER]: new FakePeer(NEWCOMER, randomLabel()),
  };
  const node = await Node.join(fakeClient([parent], (origin) => children[origin]), { name: 'n', maxDegree: 2 });
  const closed = [];
  node.addEventListener('child-close', (event) => closed.push(event.detail.id));
  parent.receive(offerFrom(ANSWERER));
  parent.receive(offerFrom(NEWCOMER));
  await settle();
  assert.deepEqual(node.info().children.sort(), [ANSWERER, NEWCOMER]);
  const marked = children[ANSWERER];
  const unmarked = children[NEWCOMER];
  // At once, then every interval, to the marked child only.
  assert.equal(marked.heartbeats(), 1);
  advance(250);
  assert.equal(marked.heartbeats(), 2);
  marked.receive(heartbeatMessage());
  unmarked.receive(dataMessage('still here'));
  advance(1000);
  assert.equal(unmarked.heartbeats(), 0);
  // The marked child went silent at 250 ms: closed at 1250 ms; the unmarked one stays.
  assert.ok(marked.closed);
  assert.deepEqual(closed, [ANSWERER]);
  advance(5000);
  assert.equal(unmarked.heartbeats(), 0);
  assert.ok(!unmarked.closed);
  assert.deepEqual(node.info().children, [NEWCOMER]);
  node.close();
});

test('requests for a quiet child wait at its parent until it speaks, and are decided again if it dies', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const parent = new FakePeer('p', HEARTBEAT_LABEL);
  const peers = new Map();
  const childPeer = (origin) => {
    peers.set(origin, new FakePeer(origin, HEARTBEAT_LABEL));
    return peers.get(origin);
  };
  const node = await Node.join(fakeClient([parent], childPeer), { name: 'n', maxDegree: 1 });
  parent.receive(offerFrom(ANSWERER));
  await settle();
  const child = peers.get(ANSWERER);
  const requests = () => child.sent.filter((text) => text.includes('JOIN-REQUEST')).length;
  // Heard at 0 ms: a request at 300 ms goes on; one at 400 ms waits (silent > 375 ms).
  advance(300);
  parent.receive(offerFrom(NEWCOMER));
  assert.equal(requests(), 1);
  advance(100);
  parent.receive(joinRequestMessage(relayed(NEWCOMER, { candidate: candidate(1) })));
  assert.equal(requests(), 1);
  assert.equal(node.info().stored, 1);
  child.receive(heartbeatMessage());
  assert.equal(requests(), 2);
  assert.equal(node.info().stored, 0);
  // Held again, then the child dies: the held offer is answered here, where there is room.
  advance(400);
  parent.receive(offerFrom(OTHER));
  assert.equal(requests(), 2);
  advance(600);
  assert.ok(child.closed);
  await settle();
  assert.deepEqual(node.info().children, [OTHER]);
  node.close();
});

test('a data channel label is the caller\'s choice', () => {
  const client = new Client('ws://127.0.0.1:9');
  assert.throws(() => client.join({ label: 5 }), { code: 'InvalidOptions' });
  assert.throws(() => client.join({ label: 'x'.repeat(65536) }), { code: 'InvalidOptions' });
});

test('heartbeats can be turned off', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const parent = new FakePeer('p', HEARTBEAT_LABEL);
  const child = new FakePeer(ANSWERER, HEARTBEAT_LABEL);
  const client = fakeClient([parent], () => child);
  const node = await Node.join(client, { name: 'n', heartbeatInterval: null });
  const data = [];
  node.addEventListener('data', (event) => data.push(event.detail.data));
  assert.deepEqual(client.joins, [{}]);
  parent.receive(heartbeatMessage());
  parent.receive(offerFrom(ANSWERER));
  await settle();
  assert.deepEqual(node.info().children, [ANSWERER]);
  advance(5000);
  assert.equal(parent.heartbeats() + child.heartbeats(), 0);
  assert.equal(node.info().state, 'connected');
  assert.deepEqual(data, []);
  node.close();
});

test('the newcomer switches its destination on the first message it receives', () => {
  const n = Negotiation.newcomer();
  // A candidate gathered before the offer waits for it.
  assert.deepEqual(n.localCandidate(candidate(1)), []);
  const [offer, c1] = n.localDescription({ type: 'offer', sdp: 'o' });
  assert.equal(offer, '{"origin":null,"destination":null,"signal":{"type":"offer","sdp":"o"},"rank":0}');
  assert.equal(c1, JSON.stringify({ origin: null, destination: null, signal: candidateSignal(candidate(1)), rank: 1 }));
  assert.deepEqual(n.receive(relayed(ANSWERER, { candidate: candidate(9) }, NEWCOMER)), { kind: 'queued' });
  assert.equal(n.remoteId, ANSWERER);
  assert.equal(n.localId, NEWCOMER);
  const [c2] = n.localCandidate(candidate(2));
  assert.deepEqual(JSON.parse(c2), { origin: null, destination: ANSWERER, signal: candidateSignal(candidate(2)), rank: 2 });
  assert.deepEqual(n.receive(relayed(OTHER, { type: 'answer', sdp: 'x' })), { kind: 'dropped', reason: Dropped.ForeignOrigin });
  assert.deepEqual(n.receive(relayed(ANSWERER, { type: 'offer', sdp: 'x' })), { kind: 'dropped', reason: Dropped.WrongKind });
  assert.equal(n.receive(relayed(ANSWERER, { type: 'answer', sdp: 'a' })).kind, 'description');
  assert.deepEqual(n.receive(relayed(ANSWERER, { candidate: candidate(10) })), { kind: 'queued' }, 'still applying');
  assert.deepEqual(n.remoteApplied().map((c) => c.candidate), [candidate(9).candidate, candidate(10).candidate]);
  assert.equal(n.receive(relayed(ANSWERER, { candidate: candidate(11) })).kind, 'candidate');
  assert.deepEqual(n.receive(relayed(ANSWERER, { type: 'answer', sdp: 'a' })), { kind: 'dropped', reason: Dropped.Duplicate });
  assert.deepEqual(n.receive(relayed(ANSWERER, { candidate: { ...candidate(1), candidate: '' } })), { kind: 'dropped', reason: Dropped.EmptyCandidate });
  n.finish();
  assert.deepEqual(n.receive(relayed(ANSWERER, { candidate: candidate(12) })), { kind: 'dropped', reason: Dropped.Late });
  assert.deepEqual(n.localCandidate(candidate(3)), []);
});

test('the answerer addresses the newcomer and accepts simple-peer 9 candidates', () => {
  const a = Negotiation.answerer(NEWCOMER);
  assert.equal(a.receive(relayed(NEWCOMER, { type: 'offer', sdp: 'o' })).kind, 'description');
  assert.deepEqual(a.receive(relayed(NEWCOMER, { type: 'candidate', candidate: candidate(1) })), { kind: 'queued' });
  a.remoteApplied();
  const [answer] = a.localDescription({ type: 'answer', sdp: 'a' });
  assert.deepEqual(JSON.parse(answer), { origin: null, destination: NEWCOMER, signal: { type: 'answer', sdp: 'a' }, rank: 0 });
  assert.deepEqual(a.receive(relayed(OTHER, { candidate: candidate(2) })), { kind: 'dropped', reason: Dropped.ForeignOrigin });
  assert.deepEqual(a.receive(relayed(NEWCOMER, { renegotiate: true })), { kind: 'dropped', reason: Dropped.Malformed });
  assert.equal(signalKind({ type: 'offer', sdp: 'x' }), 'description');
  assert.equal(signalKind({ candidate: candidate(1) }), 'candidate');
  assert.equal(signalKind({ type: 'offer' }), null);
  assert.equal(signalKind(null), null);
});

// The cases of crates/peer/src/address.rs, where they apply to a browser.
test('server addresses are checked like the Rust client does', () => {
  const { rootUrl, ...plain } = parseServerAddress('ws://127.0.0.1:8080');
  assert.deepEqual(plain, {
    base: 'ws://127.0.0.1:8080',
    overlay: DEFAULT_OVERLAY,
    joinUrl: 'ws://127.0.0.1:8080/join',
    joinUrlRedacted: 'ws://127.0.0.1:8080/join',
    protocols: undefined,
    hasToken: false,
    httpUrl: 'http://127.0.0.1:8080',
    iceServersUrl: 'http://127.0.0.1:8080/ice-servers',
    iceServersUrlRedacted: 'http://127.0.0.1:8080/ice-servers',
    optionToken: null,
  });
  assert.equal(rootUrl('s3cret'), 'ws://127.0.0.1:8080/s3cret/webrtc-bootstrap-root');
  const secure = parseServerAddress('wss://example.org/');
  assert.equal(secure.joinUrl, 'wss://example.org/join');
  assert.equal(secure.httpUrl, 'https://example.org');
  for (const bad of ['a/b', '..', '', 5]) assert.throws(() => secure.rootUrl(bad), InvalidSecretError, String(bad));
  for (const bad of [
    'http://x', 'x:80', 'ws://', 'ws:///', 'ws:///o/a', 'ws://x/join', 'ws://x/o/a/join', 'ws://x/o/a/t/tok/join',
    'ws://x/s3cret/webrtc-bootstrap-root', 'ws://x/t', 'ws://x/o/', 'ws://x?y', 'ws://x/o/a?token=t', 'ws://x/#f',
    'ws://x/a b', 'ws://x//join', 'ws://x/a//b', 'ws://x/../b', 'ws://x/a%20b', 5,
  ]) {
    assert.throws(() => parseServerAddress(bad), InvalidAddressError, String(bad));
  }
});

test('an overlay in the options or the address', () => {
  const chat = parseServerAddress('ws://h:1', { overlay: 'chat' });
  assert.equal(chat.overlay, 'chat');
  assert.equal(chat.joinUrl, 'ws://h:1/o/chat/join');
  assert.equal(chat.rootUrl('k'), 'ws://h:1/o/chat/k/webrtc-bootstrap-root');
  assert.equal(chat.httpUrl, 'http://h:1', '/healthz is the server\'s, not the overlay\'s');
  for (const same of [parseServerAddress('ws://h:1/o/chat'), parseServerAddress('ws://h:1/o/chat/'),
    parseServerAddress('ws://h:1/o/chat', { overlay: 'chat' })]) {
    assert.equal(same.joinUrl, 'ws://h:1/o/chat/join');
    assert.equal(same.base, 'ws://h:1/o/chat');
  }
  // A reverse proxy's prefix comes first; an overlay named `join` is an overlay.
  const proxied = parseServerAddress('wss://h/signal', { overlay: 'a' });
  assert.equal(proxied.joinUrl, 'wss://h/signal/o/a/join');
  assert.equal(proxied.httpUrl, 'https://h/signal');
  assert.equal(parseServerAddress('ws://h/o/join').joinUrl, 'ws://h/o/join/join');
  assert.throws(() => parseServerAddress('ws://h/o/a', { overlay: 'b' }), InvalidAddressError);
  assert.equal(parseServerAddress('ws://h', { overlay: null }).joinUrl, 'ws://h/join');
  const long = 'n'.repeat(65);
  for (const bad of ['', '.', '..', 'a/b', 'a b', 'caf\u00e9', long, 7]) {
    assert.equal(isOverlayName(bad), false, String(bad));
    assert.throws(() => parseServerAddress('ws://h', { overlay: bad }), InvalidOverlayError, String(bad));
  }
  assert.ok(isOverlayName('n'.repeat(64)) && isOverlayName('a.b_c~d-e'));
  assert.throws(() => parseServerAddress(`ws://h/o/${long}`), InvalidOverlayError);
  assert.throws(() => new Client('ws://h', { overlay: '..' }), (error) => error.code === 'InvalidOverlay');
  assert.equal(new Client('ws://h', { overlay: 'chat' }).overlay, 'chat');
  assert.equal(new Client('ws://h').overlay, 'default');
});

test('a join token rides in the bearer subprotocol, or stays in the address path', () => {
  const token = 'eyJhbGciOiJIUzI1NiJ9.eyJvdmwiOiJhIn0.c2ln-_';
  const s = parseServerAddress('ws://h:1', { overlay: 'a', token });
  assert.equal(s.joinUrl, 'ws://h:1/o/a/join', 'the token stays out of the URL');
  assert.deepEqual(s.protocols, [BEARER_SUBPROTOCOL, token]);
  assert.equal(BEARER_SUBPROTOCOL, 'bearer');
  assert.ok(s.hasToken);
  assert.equal(s.rootUrl('k'), 'ws://h:1/o/a/k/webrtc-bootstrap-root', 'the join token has no place on the root path');
  // As a JS client is given it: the token stays in the path, and out of errors.
  const path = parseServerAddress('ws://h:1/o/a/t/eyJ.x');
  assert.equal(path.joinUrl, 'ws://h:1/o/a/t/eyJ.x/join');
  assert.equal(path.joinUrlRedacted, 'ws://h:1/o/a/t/<token>/join');
  assert.equal(path.protocols, undefined);
  assert.ok(path.hasToken);
  assert.equal(path.base, 'ws://h:1/o/a');
  assert.equal(parseServerAddress('ws://h/t/tok', { overlay: 'a' }).joinUrl, 'ws://h/o/a/t/tok/join');
  assert.throws(() => parseServerAddress('ws://h/t/tok', { token: 'tok' }), InvalidAddressError);
  for (const bad of ['', 'a b', 'a/b', 'a?b', 'a&b=c', 'a%20', '..', 'caf\u00e9', 5]) {
    assert.throws(() => parseServerAddress('ws://h', { token: bad }), InvalidTokenError, String(bad));
  }
  assert.throws(() => new Client('ws://h', { token: 'a b' }), (error) => error.code === 'InvalidToken' && !error.message.includes('a b'));
});

test('errors never show a token', () => {
  const secret = 'eyJTOKEN';
  for (const bad of ['ws://h/t/eyJTOKEN/join', 'ws://h/o/a/t/eyJTOKEN?x', 'ws://user:eyJTOKEN@h/join',
    'ws://h/join?token=eyJTOKEN', 'ws://h/t/eyJTOKEN/a%20']) {
    assert.throws(() => parseServerAddress(bad), (error) => error instanceof InvalidAddressError && !error.message.includes(secret), bad);
  }
  assert.equal(redactAddress('ws://u:p@h/o/a/t/eyJ/x?token=eyJ'), 'ws://h/o/a/t/<token>/x?…');
  assert.throws(() => new Client('ws://h', { token: `${secret} ` }), (error) => !error.message.includes(secret));
});

test('a refused /join socket is explained from /healthz', () => {
  const health = (overlays, prospects = 0) => ({ status: 'ok', prospects, max_prospects: 100, overlays });
  const entry = (name, prospects = 0) => ({ name, root_connected: true, prospects, max_prospects: 10, dynamic: false });
  const url = 'ws://h/o/chat/join';
  const chat = parseServerAddress('ws://h', { overlay: 'chat' });
  const withToken = parseServerAddress('ws://h', { overlay: 'chat', token: 'eyJ.a.b' });
  const cases = [
    [chat, health([entry('default')]), Refusal.NoSuchOverlay, /overlay "chat" does not exist.*404/],
    [chat, health([entry('chat', 10)]), Refusal.Full, /full.*503/],
    [chat, health([entry('chat')], 100), Refusal.Full, /full.*503/],
    [chat, health([entry('chat')]), Refusal.Unauthorized, /requires a join token.*401.*none was given/],
    [withToken, health([entry('chat')]), Refusal.Unauthorized, /join token was refused.*401.*not for overlay "chat"/],
    [withToken, null, Refusal.Unknown, /join token was refused \(401\).*does not exist \(404\).*full \(503\)/],
    [chat, { status: 'ok' }, Refusal.Unknown, /a join token is required \(401\)/],
  ];
  for (const [server, report, refusal, text] of cases) {
    const error = refusalFromHealth(server, url, report);
    assert.ok(error instanceof JoinRefusedError);
    assert.equal(error.code, 'JoinRefused');
    assert.equal(error.refusal, refusal, JSON.stringify(report));
    assert.match(error.message, text);
    assert.equal(error.url, url);
  }
  assert.equal(refusalFromHealth(parseServerAddress('ws://h'), '/join', health([entry('default')])).refusal, Refusal.Unauthorized);
  assert.equal(new JoinRefusedError('u', 'r').refusal, Refusal.Unknown);
});

test('errors are typed, with stable codes', () => {
  const error = new NoAnswerError(3000);
  assert.ok(error instanceof BootstrapError && error instanceof Error);
  assert.equal(error.code, 'NoAnswer');
  assert.equal(error.name, 'NoAnswerError');
  assert.match(error.message, /no root may be connected/);
  assert.equal(new ClosedError().code, 'Closed');
  assert.equal(new WrongOriginError('a', 'b').code, 'WrongOrigin');
  assert.match(randomLabel(), /^[0-9a-f]{40}$/);
});

test('the demo lays trees out and explains failures', () => {
  const tree = { name: 'root', children: [{ name: 'p1', children: [{ name: 'p3', children: [] }] }, { name: 'p2', children: [] }] };
  const { nodes, width, height } = layoutTree(tree);
  assert.deepEqual([width, height, nodes.length, treeSize(tree)], [2, 3, 4, 4]);
  const at = Object.fromEntries(nodes.map((n) => [n.name, [n.x, n.y]]));
  assert.deepEqual(at, { root: [0.5, 0], p1: [0, 1], p3: [0, 2], p2: [1, 1] });
  assert.equal(parentName(tree, 'p3'), 'p1');
  assert.equal(parentName(tree, 'root'), null);
  assert.match(failureMessage(new NoAnswerError(2500), 'ws://h').text, /No root seems to be connected to overlay "default": start one with bootstrap-node root --url ws:\/\/h --secret/);
  assert.match(failureMessage(new NoAnswerError(2500), 'ws://h', { overlay: 'chat' }).text, /root --url ws:\/\/h --overlay chat --secret S \(or --token ROOT_TOKEN\)/);
  assert.equal(failureMessage({ code: 'Unreachable' }, 'ws://h').title, 'The bootstrap server is unreachable');
  const options = demoOptions('?name=x&maxDegree=3&timeout=100', { protocol: 'http:', host: 'h:1' });
  assert.deepEqual(options, {
    server: 'ws://h:1', name: 'x', maxDegree: 3, timeout: 100, requestTimeout: 100, overlay: null, token: null,
    relayOnly: false, iceFromServer: false, debug: false,
  });
});

test('the demo joins the overlay and token of its link, and explains refusals', () => {
  const page = { protocol: 'https:', host: 'h', origin: 'https://h', pathname: '/demo/' };
  const options = demoOptions('?overlay=chat&token=eyJ.a.b&relay=1', page);
  assert.equal(options.server, 'wss://h');
  assert.equal(options.overlay, 'chat');
  assert.equal(options.token, 'eyJ.a.b');
  assert.equal(demoOptions('?overlay=&token=', page).overlay, null);
  assert.equal(roomLink('?overlay=chat&token=eyJ.a.b&name=me&server=ws%3A%2F%2Fx&relay=1', page),
    'https://h/demo/?overlay=chat&server=ws%3A%2F%2Fx&relay=1');
  assert.equal(roomLink('?name=me', page), 'https://h/demo/');
  const refused = (refusal) => new JoinRefusedError('ws://h/o/chat/join', 'r', refusal);
  const context = { overlay: 'chat', hasToken: true };
  assert.equal(failureMessage(refused(Refusal.Unauthorized), 'ws://h', context).title, 'The join token was refused');
  assert.match(failureMessage(refused(Refusal.Unauthorized), 'ws://h', context).text, /HTTP 401/);
  assert.equal(failureMessage(refused(Refusal.Unauthorized), 'ws://h', { overlay: 'chat' }).title, 'This overlay needs a join token');
  assert.match(failureMessage(refused(Refusal.NoSuchOverlay), 'ws://h', context).text, /has no overlay "chat"/);
  assert.equal(failureMessage(refused(Refusal.Full), 'ws://h', context).title, 'The overlay is full');
  assert.equal(failureMessage(refused(Refusal.Unknown), 'ws://h', context).title, 'The server refused to let this tab join');
  assert.equal(failureMessage(new InvalidOverlayError('a/b'), 'ws://h').title, 'Invalid overlay name');
  assert.equal(failureMessage(new InvalidTokenError(), 'ws://h').title, 'Invalid join token');
});
