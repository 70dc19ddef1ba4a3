// A webrtc-tree-overlay node for browsers, over ./bootstrap.js: it joins the tree, answers
// join requests while it has room, delegates them to a child with `JOIN-REQUEST` when
// full, forwards broadcasts down and to-root messages up, and reports its subtree, all
// wire-compatible with the Rust overlay (crates/overlay) and the JS webrtc-tree-overlay.
//
// Data-channel messages (docs/protocol.md#data-channel-messages, crates/overlay/src/wire.rs): JSON text,
// `{"type":"DATA","data":…}` for the application and the bootstrap request plus
// `"type":"JOIN-REQUEST"` for delegated joins (parent → child only), and
// `{"type":"HEARTBEAT"}` between nodes that both support heartbeats.
// Conventions inside `data` (crates/overlay/src/event.rs, topology.rs), each an object with
// exactly one key so JS tree-overlay nodes relay them as plain data:
// - `{"broadcast": payload}`: down the whole subtree, every node forwards it to its children;
// - `{"to-root": payload}`: up to the root, every node forwards it to its parent;
// - `{"subtree": T}`: child → parent topology report, `T = {"name", "children": [T…]}`;
// - `{"broadcast": {"tree": T}}`: the whole tree, shared by the root.
//
// A node lives in its client's overlay (`new Client(address, { overlay, token })`): it
// joins there, and each answer to a newcomer opens a `/join` socket there with the same
// join token, so a tree never spans overlays. Its TURN options (`iceFromServer`,
// `relayOnly`) apply the same way: the join and every answer share the client's fetched
// credentials, and a relay-only client relays all of the node's links.
//
// Heartbeats (docs/protocol.md#heartbeats-between-rust-and-browser-nodes,
// crates/overlay/src/liveness.rs): a crashed neighbour sends nothing, and without them it
// is noticed only when ICE gives up. A newcomer that supports them labels its data
// channel `HEARTBEAT_LABEL`; its parent then sends `HEARTBEAT` at once and every interval,
// and the child starts its own on the parent's first. JS tree-overlay nodes throw on an
// unknown `type`, so a child with any other label never gets one. Any message is a sign
// of life; a link silent for the timeout is closed, and an orphan re-joins at once.
//
// Layout: the IO-free pieces (hash, wire format, deliveries, `Topology`, `Liveness`,
// `NodeCore`), then `Node`, the IO.

import { BootstrapError, ClosedError, signalKind } from './bootstrap.js';

export const DATA = 'DATA';
export const JOIN_REQUEST = 'JOIN-REQUEST';
export const HEARTBEAT = 'HEARTBEAT';
/** The data-channel label of a newcomer that supports heartbeats (as the Rust nodes'). */
export const HEARTBEAT_LABEL = 'webrtc-tree-overlay/heartbeat/1';
export const BROADCAST_KEY = 'broadcast';
export const TO_ROOT_KEY = 'to-root';
export const SUBTREE_KEY = 'subtree';
export const TREE_KEY = 'tree';

/** Most requests stored for one empty slot; more are dropped. */
export const MAX_STORED_PER_SLOT = 256;
/** Topology reports are coalesced: at most one per this many ms. */
export const REPORT_DEBOUNCE_MS = 100;
/** Deepest subtree accepted from a child. */
const MAX_TREE_DEPTH = 64;
/** A link is quiet once silent this many intervals: requests for a quiet child wait at
 * its parent instead of being sent where they may be lost. */
const QUIET_INTERVALS = 1.5;

// ---------------------------------------------------------------------------------------
// Errors of the node (the peer's errors come from ./bootstrap.js).

/** This node has no parent (it is re-joining). */
export class NoParentError extends BootstrapError {
  constructor() {
    super('NoParent', 'no parent connected');
  }
}

/** No child with this id. */
export class NoSuchChildError extends BootstrapError {
  constructor(id) {
    super('NoSuchChild', `no child with id ${id}`);
    this.id = id;
  }
}

// ---------------------------------------------------------------------------------------
// IO-free helpers.

/** Robert Jenkins' 32-bit integer hash masked to 31 bits after every step, as
 * webrtc-tree-overlay's `hash31` (and crates/overlay/src/hash.rs). */
export function hash31(input) {
  const MASK = 0x7fffffff;
  let a = input >>> 0;
  a = (a + 0x7ed55d16 + ((a << 12) >>> 0)) & MASK;
  a = (a ^ 0xc761c23c ^ (a >>> 19)) & MASK;
  a = (a + 0x165667b1 + ((a << 5) >>> 0)) & MASK;
  a = ((a + 0xd3a2646c) ^ (a << 9)) & MASK;
  a = (a + 0xfd7046c5 + ((a << 3) >>> 0)) & MASK;
  a = (a ^ 0xb55a4f09 ^ (a >>> 16)) & MASK;
  return a >>> 0;
}

/** The child slot requests from `origin` go to: the same for the offer and every later
 * candidate of one newcomer (JS: `hash31(parseInt(origin.slice(0,6),16) ^ id) % maxDegree`). */
export function slotFor(origin, nodeId, maxDegree) {
  const prefix = parseInt(String(origin).slice(0, 6), 16);
  return hash31(((Number.isNaN(prefix) ? 0 : prefix) ^ nodeId) >>> 0) % Math.max(1, maxDegree);
}

/**
 * Parses a data-channel message: `{ kind: 'data', data }`, `{ kind: 'join-request',
 * request }` (the bootstrap envelope without the overlay's `type`), `{ kind: 'heartbeat' }`,
 * or `{ kind: 'invalid', reason }` (the JS overlay throws on these; we ignore them).
 */
export function parseChannelMessage(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { kind: 'invalid', reason: `not JSON: ${error.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { kind: 'invalid', reason: 'not a JSON object' };
  }
  if (value.type === DATA) return { kind: 'data', data: value.data === undefined ? null : value.data };
  if (value.type === HEARTBEAT) return { kind: 'heartbeat' };
  if (value.type === JOIN_REQUEST) {
    const { type: _type, ...request } = value;
    return { kind: 'join-request', request };
  }
  return { kind: 'invalid', reason: `unknown message type ${JSON.stringify(value.type ?? '')}` };
}

/** `{"type":"DATA","data":<data>}`. */
export function dataMessage(data) {
  return JSON.stringify({ type: DATA, data });
}

/** A bootstrap request plus `"type":"JOIN-REQUEST"`, as the JS overlay forwards it. */
export function joinRequestMessage(request) {
  const { type: _type, ...rest } = request;
  return JSON.stringify({ ...rest, type: JOIN_REQUEST });
}

/** `{"type":"HEARTBEAT"}`. */
export function heartbeatMessage() {
  return JSON.stringify({ type: HEARTBEAT });
}

/** `{ [key]: data }`. */
export function wrap(key, data) {
  return { [key]: data };
}

function singleKey(data) {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return null;
  const keys = Object.keys(data);
  return keys.length === 1 ? keys[0] : null;
}

/** Splits a received payload into its delivery (`'direct'`, `'broadcast'`, `'to-root'`)
 * and the application data. */
export function unwrapDelivery(data) {
  const key = singleKey(data);
  if (key === BROADCAST_KEY) return { delivery: 'broadcast', data: data[key] };
  if (key === TO_ROOT_KEY) return { delivery: 'to-root', data: data[key] };
  return { delivery: 'direct', data };
}

/** The tree inside a broadcast `{"tree": T}`, or `undefined`. */
export function treeOf(delivery, data) {
  return delivery === 'broadcast' && singleKey(data) === TREE_KEY ? data[TREE_KEY] : undefined;
}

/** The subtree inside a child's `{"subtree": T}`, or `undefined`. */
export function subtreeOf(data) {
  return singleKey(data) === SUBTREE_KEY ? data[SUBTREE_KEY] : undefined;
}

/** Whether `value` is `{"name": string, "children": [tree…]}`, at most 64 deep. */
export function isTree(value, depth = 0) {
  return depth < MAX_TREE_DEPTH
    && value !== null && typeof value === 'object'
    && typeof value.name === 'string'
    && Array.isArray(value.children)
    && value.children.every((child) => isTree(child, depth + 1));
}

/** The placeholder for a child that never reported (a JS node): `?` + 8 chars of its id. */
export function placeholder(id) {
  return { name: `?${id.slice(0, 8)}`, children: [] };
}

/**
 * One node's view of its subtree and when to report it (crates/overlay/src/topology.rs).
 * Time is passed in (ms), so it is testable without a clock.
 */
export class Topology {
  constructor(name) {
    this.name = name;
    this.reports = new Map();
    this.lastSent = null;
    /** When `poll` has something to do (ms), or null. */
    this.due = null;
  }

  /** Something changed: report within the debounce delay. */
  touch(now) {
    if (this.due === null) this.due = now + REPORT_DEBOUNCE_MS;
  }

  /** A new parent needs the report even if nothing changed. */
  reset(now) {
    this.lastSent = null;
    this.touch(now);
  }

  /** A child reported its subtree; returns whether the report is well-formed. */
  childReport(child, subtree, now) {
    if (!isTree(subtree)) return false;
    const text = JSON.stringify(subtree);
    if (this.reports.get(child)?.text !== text) {
      this.reports.set(child, { tree: subtree, text });
      this.touch(now);
    }
    return true;
  }

  /** A child left. */
  childGone(child, now) {
    this.reports.delete(child);
    this.touch(now);
  }

  /** When due: this node's subtree if it changed since the last report, else null.
   * `children` are the children's ids in slot order. */
  poll(now, children) {
    if (this.due === null || this.due > now) return null;
    this.due = null;
    const tree = {
      name: this.name,
      children: children.map((id) => this.reports.get(id)?.tree ?? placeholder(id)),
    };
    const text = JSON.stringify(tree);
    if (text === this.lastSent) return null;
    this.lastSent = text;
    return tree;
  }
}

/** The liveness key of the parent link. */
export const PARENT_LINK = 'parent';

const CHILD_LINK_PREFIX = 'child:';

/** The liveness key of the link to child `id`. */
export function childLink(id) {
  return CHILD_LINK_PREFIX + id;
}

/** The child id of a liveness key, or null for the parent's. */
export function linkChild(link) {
  return link.startsWith(CHILD_LINK_PREFIX) ? link.slice(CHILD_LINK_PREFIX.length) : null;
}

/**
 * The watched links of one node: when each is due a heartbeat and which went silent
 * (crates/overlay/src/liveness.rs). Links are keys (`PARENT_LINK`, `childLink(id)`);
 * time is passed in (ms), so it is testable without a clock.
 */
export class Liveness {
  /** `interval`: how often a heartbeat goes out on each watched link; `timeout`: a link
   * silent this long is dead (both ms). */
  constructor({ interval, timeout }) {
    this.interval = interval;
    this.timeout = timeout;
    this.links = new Map(); // key → { lastHeard, nextBeat }
    /** When the links were last checked: the checks come at least every interval, so a
     * longer gap means this page was too busy (or throttled) to run them. */
    this.lastCheck = null;
  }

  /** Starts watching `link` (heard from now); returns whether it was new. The caller
   * sends a heartbeat at once and reports it with `sent`. */
  watch(link, now) {
    if (this.links.has(link)) return false;
    this.links.set(link, { lastHeard: now, nextBeat: now });
    return true;
  }

  isWatched(link) {
    return this.links.has(link);
  }

  /** Something arrived on `link`. */
  heard(link, now) {
    const watched = this.links.get(link);
    if (watched) watched.lastHeard = Math.max(watched.lastHeard, now);
  }

  /** A heartbeat was sent on `link`: the next is due an interval later. */
  sent(link, now) {
    const watched = this.links.get(link);
    if (watched) watched.nextBeat = now + this.interval;
  }

  /** Stops watching `link` (it closed). */
  forget(link) {
    this.links.delete(link);
  }

  /** Forgets every link. */
  clear() {
    this.links.clear();
    this.lastCheck = null;
  }

  /** Whether `link` is watched and has been silent for more than 1.5 intervals. */
  isQuiet(link, now) {
    const watched = this.links.get(link);
    return watched !== undefined && now - watched.lastHeard > this.interval * QUIET_INTERVALS;
  }

  /** Whether `link` is watched and due a heartbeat at `now`. */
  isDue(link, now) {
    const watched = this.links.get(link);
    return watched !== undefined && watched.nextBeat <= now;
  }

  /** The links due a heartbeat at `now`, the parent first. */
  due(now) {
    return [...this.links].filter(([, watched]) => watched.nextBeat <= now).map(([link]) => link).sort(linkOrder);
  }

  /**
   * The links silent for the timeout at `now`, the parent first; they are forgotten.
   *
   * When this check comes late (more than two intervals after the last one), the page
   * was starved or its timers throttled: what the links sent may be waiting unread, so
   * the lateness is not counted as silence.
   */
  takeDead(now) {
    if (this.lastCheck !== null && now - this.lastCheck > 2 * this.interval) {
      const late = now - this.lastCheck - this.interval;
      for (const watched of this.links.values()) watched.lastHeard = Math.min(watched.lastHeard + late, now);
    }
    this.lastCheck = now;
    const dead = [...this.links]
      .filter(([, watched]) => watched.lastHeard + this.timeout <= now)
      .map(([link]) => link)
      .sort(linkOrder);
    for (const link of dead) this.links.delete(link);
    return dead;
  }

  /** When `due` or `takeDead` next has something (ms), or null. */
  nextDeadline() {
    const deadlines = [...this.links.values()].map((w) => Math.min(w.nextBeat, w.lastHeard + this.timeout));
    return deadlines.length > 0 ? Math.min(...deadlines) : null;
  }
}

/** The parent first, then the children by id. */
function linkOrder(a, b) {
  if (a === b) return 0;
  if (a === PARENT_LINK) return -1;
  if (b === PARENT_LINK) return 1;
  return a < b ? -1 : 1;
}

/**
 * A node's children, candidates and stored requests, and the decision for each join
 * request (crates/overlay/src/core.rs). `onRequest` returns one of
 * `{ kind: 'to-candidate' }`, `{ kind: 'answer' }`, `{ kind: 'forward', child }`,
 * `{ kind: 'stored', slot }`, `{ kind: 'dropped', reason }`.
 */
export class NodeCore {
  constructor(nodeId, maxDegree, requestTimeoutMs) {
    this.nodeId = nodeId;
    this.requestTimeoutMs = requestTimeoutMs;
    this.slots = new Array(maxDegree).fill(null);
    this.candidates = new Map(); // origin → deadline
    this.stored = Array.from({ length: maxDegree }, () => []); // [{deadline, request}]
  }

  /** `isQuiet(child)` says whether a child went silent (heartbeats): a request for it is
   * stored, not forwarded where it may be lost, until the child is heard again
   * (`takeStored`) or gone. */
  onRequest(origin, isOffer, request, now, isQuiet = () => false) {
    if (this.candidates.has(origin)) return { kind: 'to-candidate' };
    if (this.slots.includes(origin)) return { kind: 'dropped', reason: 'AlreadyChild' };
    if (isOffer && this.hasRoom()) {
      this.candidates.set(origin, now + this.requestTimeoutMs);
      return { kind: 'answer' };
    }
    if (this.slots.length === 0) return { kind: 'dropped', reason: 'UnknownOrigin' };
    const slot = slotFor(origin, this.nodeId, this.slots.length);
    const child = this.slots[slot];
    // Requests already waiting for a quiet child go first: keep the order.
    if (child !== null && this.stored[slot].length === 0 && !isQuiet(child)) return { kind: 'forward', child };
    const queue = this.stored[slot];
    if (queue.length >= MAX_STORED_PER_SLOT) return { kind: 'dropped', reason: 'StoreFull' };
    queue.push({ deadline: now + this.requestTimeoutMs, request });
    return { kind: 'stored', slot };
  }

  /** A candidate connected: its slot and the requests stored there, or null. */
  candidateConnected(origin) {
    if (!this.candidates.delete(origin)) return null;
    const slot = this.slots.indexOf(null);
    if (slot < 0) return null;
    this.slots[slot] = origin;
    return { slot, stored: this.stored[slot].splice(0).map((entry) => entry.request) };
  }

  candidateFailed(origin) {
    return this.candidates.delete(origin);
  }

  /** The slot of child `origin`, or null. */
  slotOf(origin) {
    const slot = this.slots.indexOf(origin);
    return slot >= 0 ? slot : null;
  }

  /** Takes the requests stored for `slot`, in order. */
  takeStored(slot) {
    return this.stored[slot].splice(0).map((entry) => entry.request);
  }

  childClosed(origin) {
    const slot = this.slots.indexOf(origin);
    if (slot >= 0) this.slots[slot] = null;
    return slot >= 0 ? slot : null;
  }

  /** Drops candidates and stored requests whose time is up: `{ candidates, requests }`. */
  expire(now) {
    const candidates = [];
    for (const [origin, deadline] of this.candidates) {
      if (deadline <= now) {
        this.candidates.delete(origin);
        candidates.push(origin);
      }
    }
    let requests = 0;
    for (const queue of this.stored) {
      const kept = queue.filter((entry) => entry.deadline > now);
      requests += queue.length - kept.length;
      queue.splice(0, queue.length, ...kept);
    }
    return { candidates: candidates.sort(), requests };
  }

  nextDeadline() {
    const deadlines = [...this.candidates.values()];
    for (const queue of this.stored) if (queue.length > 0) deadlines.push(queue[0].deadline);
    return deadlines.length > 0 ? Math.min(...deadlines) : null;
  }

  hasRoom() {
    return this.childCount() + this.candidates.size < this.slots.length;
  }

  /** The children's ids in slot order. */
  children() {
    return this.slots.filter((id) => id !== null);
  }

  childCount() {
    return this.children().length;
  }

  storedCount() {
    return this.stored.reduce((sum, queue) => sum + queue.length, 0);
  }

  clear() {
    const gone = [...this.children(), ...this.candidates.keys()];
    this.slots.fill(null);
    this.candidates.clear();
    for (const queue of this.stored) queue.length = 0;
    return gone;
  }
}

// ---------------------------------------------------------------------------------------
// The node.

/**
 * A tree node in the browser. Create it with `await Node.join(client, options)`.
 *
 * Options (defaults as the Rust `NodeOptions`): `maxDegree` (10), `requestTimeout` (ms a
 * candidate may take to connect and a stored request may wait, 30000), `rejoinDelay`
 * (200) and `rejoinMaxDelay` (10000) for re-joining with backoff after the parent left,
 * `name` (shown in the tree; default 6 random hex digits), `reportTopology` (false),
 * `heartbeatInterval` (ms between heartbeats to the parent and children that support
 * them, 250; `null` turns heartbeats off: the join's channel then gets a random label and
 * a parent's heartbeats are ignored) and `heartbeatTimeout` (a link with heartbeats that
 * stays silent this long is closed as dead, 1000).
 *
 * Events (`event.detail`): `parent-connect` ({id}), `parent-close`, `rejoin-failed`
 * ({attempt, error}), `child-connect` ({id}), `child-close` ({id}), `data` ({from:
 * 'parent' | child id, delivery: 'direct' | 'broadcast' | 'to-root', data}), `tree` (the
 * whole tree, as the root shares it), `state` (the `info()` snapshot, on every change),
 * `close`.
 */
export class Node extends EventTarget {
  /** Joins the tree; resolves once the parent is connected. Rejects with the client's
   * errors (`NoAnswerError`: no root connected?, `UnreachableError`, …). */
  static async join(client, options = {}) {
    const node = new Node(client, options);
    node.adoptParent(await client.join(node.joinOptions()));
    return node;
  }

  constructor(client, options = {}) {
    super();
    this.client = client;
    this.options = {
      maxDegree: 10,
      requestTimeout: 30000,
      rejoinDelay: 200,
      rejoinMaxDelay: 10000,
      name: null,
      reportTopology: false,
      heartbeatInterval: 250,
      heartbeatTimeout: 1000,
      ...options,
    };
    const { heartbeatInterval: interval, heartbeatTimeout: timeout } = this.options;
    /** The watched links, when heartbeats are on. */
    this.liveness = interval ? new Liveness({ interval, timeout }) : null;
    const random = new Uint32Array(2);
    crypto.getRandomValues(random);
    /** Local id, only used to spread delegated requests (never on the wire). */
    this.nodeId = random[0] % 1000000;
    this.name = this.options.name ?? (random[1] & 0xffffff).toString(16).padStart(6, '0');
    this.core = new NodeCore(this.nodeId, this.options.maxDegree, this.options.requestTimeout);
    this.topology = this.options.reportTopology ? new Topology(this.name) : null;
    this.parent = null; // { peer, id, generation }
    this.generation = 0;
    this.children = new Map(); // id → Peer
    this.candidates = new Map(); // origin → Answerer
    this.state = 'connecting';
    this.expiryTimer = null;
    this.reportTimer = null;
    this.rejoinTimer = null;
    this.heartbeatTimer = null;
    this.lastInfo = '';
  }

  /** A snapshot of the node's links. */
  info() {
    return {
      name: this.name,
      /** The overlay this node is in (`'default'` for the server's default overlay). */
      overlay: this.client.overlay,
      state: this.state,
      /** Our own `/join` id as a newcomer: the id our parent knows us by. */
      id: this.parent ? this.parent.peer.localId : null,
      parent: this.parent ? this.parent.id : null,
      children: this.core.children(),
      candidates: this.core.candidates.size,
      stored: this.core.storedCount(),
    };
  }

  /** Sends `data` to the parent (one hop). @throws {NoParentError | ClosedError} */
  sendToParent(data) {
    this.parentPeer().send(dataMessage(data));
  }

  /** Sends `data` to one child (one hop). @throws {NoSuchChildError | ClosedError} */
  sendToChild(id, data) {
    this.ensureOpen();
    const peer = this.children.get(id);
    if (!peer) throw new NoSuchChildError(id);
    peer.send(dataMessage(data));
  }

  /** Sends `data` down the whole subtree. @throws {ClosedError} */
  broadcast(data) {
    this.ensureOpen();
    this.sendChildren(dataMessage(wrap(BROADCAST_KEY, data)));
  }

  /** Sends `data` up to the root through every ancestor. @throws {NoParentError | ClosedError} */
  sendToRoot(data) {
    this.parentPeer().send(dataMessage(wrap(TO_ROOT_KEY, data)));
  }

  /** Closes the parent, every child and candidate, and stops the node. */
  close() {
    if (this.state === 'closed') return;
    this.state = 'closed';
    for (const timer of [this.expiryTimer, this.reportTimer, this.rejoinTimer, this.heartbeatTimer]) clearTimeout(timer);
    this.liveness?.clear();
    if (this.parent) this.parent.peer.close();
    this.parent = null;
    for (const peer of this.children.values()) peer.close();
    this.children.clear();
    for (const answerer of this.candidates.values()) answerer.close();
    this.candidates.clear();
    this.core.clear();
    this.publish();
    this.emit('close');
  }

  // -- internals ------------------------------------------------------------------------

  ensureOpen() {
    if (this.state === 'closed') throw new ClosedError('the node');
  }

  parentPeer() {
    this.ensureOpen();
    if (!this.parent) throw new NoParentError();
    return this.parent.peer;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  publish() {
    const info = this.info();
    const text = JSON.stringify(info);
    if (text === this.lastInfo) return;
    this.lastInfo = text;
    this.emit('state', info);
  }

  trySend(peer, text) {
    try {
      peer.send(text);
    } catch (error) {
      this.log(`send failed: ${error.message}`);
    }
  }

  sendChildren(text) {
    for (const peer of this.children.values()) this.trySend(peer, text);
  }

  log(line) {
    if (this.client.options.log) this.client.options.log(`[node ${this.name}] ${line}`);
  }

  /** The options of this node's joins: with heartbeats on, the channel's label says so. */
  joinOptions() {
    return this.liveness ? { label: HEARTBEAT_LABEL } : {};
  }

  adoptParent(peer) {
    this.generation += 1;
    const generation = this.generation;
    this.parent = { peer, id: peer.remoteId, generation };
    this.state = 'connected';
    peer.addEventListener('message', (event) => this.onMessage({ parent: generation }, event.detail));
    peer.addEventListener('close', () => this.onParentClosed(generation));
    if (this.topology) {
      this.topology.reset(Date.now());
      this.scheduleReport();
    }
    this.emit('parent-connect', { id: peer.remoteId });
    this.publish();
  }

  /** The parent link closed, or went `silent` (its heartbeats stopped). */
  onParentClosed(generation, silent = false) {
    if (this.state === 'closed' || !this.parent || this.parent.generation !== generation) return;
    this.parent = null;
    this.liveness?.forget(PARENT_LINK);
    this.state = 'rejoining';
    this.log(silent ? 'parent silent; re-joining at once' : 'parent closed; re-joining');
    this.emit('parent-close');
    this.publish();
    // The grandparent holds requests for its quiet child: go at once.
    this.startRejoin(1, silent ? 0 : null);
  }

  startRejoin(attempt, delayMs = null) {
    const { rejoinDelay, rejoinMaxDelay } = this.options;
    const delay = delayMs ?? Math.min(rejoinDelay * 2 ** Math.min(attempt - 1, 16), rejoinMaxDelay);
    this.rejoinTimer = setTimeout(() => {
      this.client.join(this.joinOptions()).then(
        (peer) => {
          if (this.state === 'closed') peer.close();
          else this.adoptParent(peer);
        },
        (error) => {
          if (this.state === 'closed') return;
          this.emit('rejoin-failed', { attempt, error });
          this.startRejoin(attempt + 1);
        },
      );
    }, delay);
  }

  onMessage(link, text) {
    if (this.state === 'closed') return;
    const fromParent = link.parent !== undefined;
    if (fromParent && (!this.parent || this.parent.generation !== link.parent)) return;
    if (!fromParent && !this.children.has(link.child)) return;
    this.heardFrom(fromParent ? PARENT_LINK : childLink(link.child), fromParent ? null : link.child);
    const parsed = parseChannelMessage(text);
    if (parsed.kind === 'invalid') {
      this.log(`ignored a data-channel message: ${parsed.reason}`);
      return;
    }
    if (parsed.kind === 'heartbeat') {
      // A child's heartbeats were expected (its label said so); a parent's first one says
      // it supports them: watch it, and answer at once. Never delivered.
      if (fromParent && this.liveness?.watch(PARENT_LINK, Date.now())) this.beat(PARENT_LINK, this.parent.peer);
      return;
    }
    if (parsed.kind === 'join-request') {
      if (!fromParent) {
        this.log('ignored a join request from a child');
        return;
      }
      this.onRequest(parsed.request);
      return;
    }
    const from = fromParent ? 'parent' : link.child;
    const subtree = fromParent ? undefined : subtreeOf(parsed.data);
    if (subtree !== undefined) {
      if (this.topology) {
        if (this.topology.childReport(link.child, subtree, Date.now())) this.scheduleReport();
        else this.log(`ignored a malformed subtree report from ${link.child}`);
      }
      return;
    }
    const { delivery, data } = unwrapDelivery(parsed.data);
    if (delivery === 'broadcast' && fromParent) {
      this.sendChildren(dataMessage(wrap(BROADCAST_KEY, data)));
    } else if (delivery === 'to-root' && !fromParent) {
      if (this.parent) this.trySend(this.parent.peer, dataMessage(wrap(TO_ROOT_KEY, data)));
      else this.log('dropped a message for the root while re-joining');
      return;
    }
    const tree = treeOf(delivery, data);
    if (tree !== undefined) this.emit('tree', tree);
    else this.emit('data', { from, delivery, data });
  }

  onRequest(request) {
    const origin = request.origin;
    if (typeof origin !== 'string' || origin === '' || signalKind(request.signal) === null) {
      this.log('ignored a malformed join request');
      return;
    }
    const isOffer = signalKind(request.signal) === 'description';
    const now = Date.now();
    const isQuiet = (child) => this.liveness?.isQuiet(childLink(child), now) ?? false;
    const decision = this.core.onRequest(origin, isOffer, request, now, isQuiet);
    switch (decision.kind) {
      case 'to-candidate':
        this.candidates.get(origin)?.signal(request);
        break;
      case 'answer': {
        this.log(`answering newcomer ${origin}`);
        const answerer = this.client.answer(request);
        this.candidates.set(origin, answerer);
        answerer.connected.then(
          (peer) => this.onAnswered(origin, answerer, peer),
          (error) => this.onAnswerFailed(origin, answerer, error),
        );
        break;
      }
      case 'forward': {
        const peer = this.children.get(decision.child);
        if (peer) this.trySend(peer, joinRequestMessage(request));
        break;
      }
      default:
        this.log(`join request from ${origin}: ${decision.kind} ${decision.reason ?? decision.slot}`);
    }
    this.scheduleExpiry();
    this.publish();
  }

  onAnswered(origin, answerer, peer) {
    if (this.candidates.get(origin) !== answerer || this.state === 'closed') {
      peer.close();
      return;
    }
    this.candidates.delete(origin);
    const connected = this.core.candidateConnected(origin);
    if (!connected) {
      peer.close();
      return;
    }
    this.children.set(origin, peer);
    peer.addEventListener('message', (event) => this.onMessage({ child: origin }, event.detail));
    peer.addEventListener('close', () => this.onChildClosed(origin, peer));
    // Only a child whose label says it supports heartbeats gets them: a JS node throws
    // on the unknown type.
    if (peer.label === HEARTBEAT_LABEL && this.liveness?.watch(childLink(origin), Date.now())) {
      this.beat(childLink(origin), peer);
    }
    for (const request of connected.stored) this.trySend(peer, joinRequestMessage(request));
    if (this.topology) {
      this.topology.touch(Date.now());
      this.scheduleReport();
    }
    this.emit('child-connect', { id: origin });
    this.scheduleExpiry();
    this.publish();
  }

  onAnswerFailed(origin, answerer, error) {
    if (this.candidates.get(origin) !== answerer) return;
    this.candidates.delete(origin);
    this.core.candidateFailed(origin);
    this.log(`answering ${origin} failed: ${error.message}`);
    this.scheduleExpiry();
    this.publish();
  }

  onChildClosed(origin, peer) {
    if (this.children.get(origin) !== peer) return;
    this.children.delete(origin);
    this.liveness?.forget(childLink(origin));
    const slot = this.core.childClosed(origin);
    if (this.topology) {
      this.topology.childGone(origin, Date.now());
      this.scheduleReport();
    }
    this.emit('child-close', { id: origin });
    this.publish();
    // Requests held for it (it was quiet) are decided again: answered here, now that
    // there is room, or stored for the next child in its slot.
    if (slot !== null) for (const request of this.core.takeStored(slot)) this.onRequest(request);
  }

  /** Something arrived on `link` (from child `child`, or the parent when null): it is
   * alive. Requests held while the child was quiet go to it now, in order; a heartbeat
   * due on the link goes out now, so a page whose timers are throttled (a hidden tab)
   * still keeps its links alive while messages arrive. */
  heardFrom(link, child) {
    if (!this.liveness) return;
    const now = Date.now();
    this.liveness.heard(link, now);
    const peer = child === null ? this.parent.peer : this.children.get(child);
    if (child !== null) {
      const slot = this.core.slotOf(child);
      const held = slot === null ? [] : this.core.takeStored(slot);
      for (const request of held) this.trySend(peer, joinRequestMessage(request));
      if (held.length > 0) this.publish();
    }
    if (this.liveness.isDue(link, now)) this.beat(link, peer);
  }

  /** Sends a heartbeat on `link` now, and schedules the next check. */
  beat(link, peer) {
    this.liveness.sent(link, Date.now());
    this.trySend(peer, heartbeatMessage());
    this.scheduleHeartbeats();
  }

  /** Sends the heartbeats due, closes the links gone silent, and schedules the next check. */
  scheduleHeartbeats() {
    clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const deadline = this.liveness?.nextDeadline() ?? null;
    if (deadline === null || this.state === 'closed') return;
    this.heartbeatTimer = setTimeout(() => {
      this.heartbeatTimer = null;
      if (this.state === 'closed') return;
      const now = Date.now();
      for (const link of this.liveness.takeDead(now)) this.closeSilent(link);
      for (const link of this.liveness.due(now)) {
        this.liveness.sent(link, now);
        const child = linkChild(link);
        const peer = child === null ? this.parent?.peer : this.children.get(child);
        if (peer) this.trySend(peer, heartbeatMessage());
      }
      this.scheduleHeartbeats();
    }, Math.max(0, deadline - Date.now()));
  }

  /** `link` went silent for the heartbeat timeout: close it as dead. */
  closeSilent(link) {
    if (link === PARENT_LINK) {
      if (!this.parent) return;
      const { peer, generation } = this.parent;
      this.log('no heartbeat from the parent; closing the link');
      this.onParentClosed(generation, true);
      peer.close();
      return;
    }
    const id = linkChild(link);
    this.log(`no heartbeat from child ${id}; closing the link`);
    this.children.get(id)?.close();
  }

  scheduleExpiry() {
    clearTimeout(this.expiryTimer);
    const deadline = this.core.nextDeadline();
    if (deadline === null || this.state === 'closed') return;
    this.expiryTimer = setTimeout(() => {
      const expired = this.core.expire(Date.now());
      for (const origin of expired.candidates) {
        this.candidates.get(origin)?.close();
        this.candidates.delete(origin);
        this.log(`candidate ${origin} timed out`);
      }
      this.scheduleExpiry();
      this.publish();
    }, Math.max(0, deadline - Date.now()));
  }

  scheduleReport() {
    if (!this.topology || this.topology.due === null || this.reportTimer !== null) return;
    this.reportTimer = setTimeout(() => {
      this.reportTimer = null;
      if (this.state === 'closed') return;
      const tree = this.topology.poll(Date.now(), this.core.children());
      if (tree && this.parent) this.trySend(this.parent.peer, dataMessage(wrap(SUBTREE_KEY, tree)));
      this.scheduleReport();
    }, Math.max(0, this.topology.due - Date.now()));
  }
}
