// webrtc-bootstrap for browsers: the newcomer and the answerer of a webrtc-bootstrap
// 4.4.1 server, over the browser's own WebSocket and RTCPeerConnection. No dependencies,
// no bundler: `import { Client } from './bootstrap.js'`.
//
// Overlays and tokens (docs/server.md#overlays-and-tokens): `options.overlay` puts every
// socket under `/o/NAME`; `options.token` (a join token) rides in the WebSocket
// subprotocol, `new WebSocket(url, ['bearer', token])`, the one carrier a browser can set
// without putting the token in the URL. A browser never sees why a socket was refused
// (401, 404, 503 all look the same), so the client asks the server's `/healthz` and says
// what most likely happened.
//
// Wire protocol (docs/protocol.md: #messages, #handshake, #timeouts-and-closing), the same as the Rust peer library and
// the JS client:
// - every signal is one text frame `{"origin":null,"destination":…,"signal":…,"rank":n}`
//   on the peer's own `/join` socket, queued until the socket is open;
// - signals are exactly `{type, sdp}` and `{candidate:{candidate, sdpMLineIndex, sdpMid}}`;
// - the newcomer sends to the root (`destination` null) until the first message it
//   receives names its answerer, then straight to that answerer;
// - the answerer sends to the newcomer (`destination` = the request's `origin`);
// - remote candidates wait until the remote description is set;
// - the initiator creates one ordered, reliable data channel labelled with 40 hex chars
//   (or the label its caller chose: `client.join({ label })`; the answerer reads it as
//   `peer.label`, so a tree parent learns whether its child supports heartbeats);
// - each side closes its `/join` socket once the data channel is open, and late signals
//   are dropped quietly.
//
// TURN (docs/server.md, `/ice-servers`): `options.iceFromServer` fetches short-lived TURN
// credentials from the server's own `[/o/NAME][/t/TOKEN]/ice-servers` over http(s) before
// the first connection, keeps them until 80 % of their `ttl` has passed, and adds them
// after `options.iceServers`; `options.relayOnly` sets `iceTransportPolicy: 'relay'`.
//
// Layout: errors (mirroring crates/peer/src/error.rs), then the IO-free pieces (address
// parsing, `Negotiation`, the `/ice-servers` request and answer), then the IO: `Client`,
// `Answerer`, `Peer`.

/** Largest message a peer sends (the Rust peer library's `MAX_MESSAGE_SIZE`). */
export const MAX_MESSAGE_SIZE = 65536;

const JOIN_PATH = '/join';
const ICE_SERVERS_PATH = '/ice-servers';

/** Share of the credentials' lifetime after which `iceFromServer` fetches new ones. */
export const ICE_REFRESH_SHARE = 0.8;

/** Lifetime assumed when an `/ice-servers` answer gives no `ttl` (seconds). */
export const ICE_TTL_WHEN_UNSAID = 300;

/** Most ICE servers, and URLs per server, taken from an `/ice-servers` answer. */
export const MAX_ICE_SERVERS = 16;

/** How long a failed refresh waits before the next try (ms), while the credentials it
 * meant to replace are still valid. */
const ICE_RETRY_AFTER_FAILED_REFRESH_MS = 10000;
const ROOT_SUFFIX = '/webrtc-bootstrap-root';

/** The server's name for the overlay at `/join`: its entry in `/healthz`, and the `ovl`
 * claim of its tokens. */
export const DEFAULT_OVERLAY = 'default';

/** Longest overlay name the server accepts. */
export const MAX_OVERLAY_LENGTH = 64;

/** The WebSocket subprotocol that carries a join token: the browser offers `bearer` and
 * the token, the server answers `bearer` (without that echo the browser drops the
 * socket). */
export const BEARER_SUBPROTOCOL = 'bearer';

/** What URLs in errors and logs show in place of a token. */
const TOKEN_PLACEHOLDER = '<token>';

// ---------------------------------------------------------------------------------------
// Errors: one class per variant of the Rust library's `Error`, all `BootstrapError`s with
// a stable `code` (the Rust variant's name) that applications can switch on.

/** Base class of every error this library raises. `code` names the case. */
export class BootstrapError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = new.target.name;
    /** The case, as the Rust variant's name: `'NoAnswer'`, `'Unreachable'`, … */
    this.code = code;
  }
}

/** The server address is not a `ws://` or `wss://` URL with a host. */
export class InvalidAddressError extends BootstrapError {
  constructor(address, reason) {
    super('InvalidAddress', `invalid server address ${JSON.stringify(address)}: ${reason}`);
    this.address = address;
    this.reason = reason;
  }
}

/** The overlay name is not 1 to 64 of `A-Z a-z 0-9 - . _ ~`, or is `.` or `..`. */
export class InvalidOverlayError extends BootstrapError {
  constructor(name) {
    super('InvalidOverlay', `invalid overlay name ${JSON.stringify(String(name))}: it must be 1 to 64 of A-Z a-z 0-9 - . _ ~ (not . or ..)`);
    this.overlay = name;
  }
}

/** The join token cannot travel unchanged: it must be non-empty and only
 * `A-Z a-z 0-9 - . _ ~`, as a JWT is. The token itself is not repeated. */
export class InvalidTokenError extends BootstrapError {
  constructor() {
    super('InvalidToken', 'the join token must be non-empty and URL-safe (A-Z a-z 0-9 - . _ ~), as a JWT is');
  }
}

/** A root secret (or root token) that cannot go into a URL path unchanged. */
export class InvalidSecretError extends BootstrapError {
  constructor() {
    super('InvalidSecret', 'the root secret or root token must be non-empty and URL-safe (A-Z a-z 0-9 - . _ ~)');
  }
}

/** The signaling server could not be reached (refused, DNS, TLS, no handshake in time). */
export class UnreachableError extends BootstrapError {
  constructor(url, reason) {
    super('Unreachable', `signaling server unreachable at ${url}: ${reason}`);
    this.url = url;
    this.reason = reason;
  }
}

/** Why a server refused a `/join` socket, as far as the client can tell (`refusal`). */
export const Refusal = Object.freeze({
  /** The overlay does not exist on this server (HTTP 404). */
  NoSuchOverlay: 'NoSuchOverlay',
  /** The join token is missing, invalid, expired or for another overlay (HTTP 401), or
   * the server throttles this address after failed attempts (HTTP 429). */
  Unauthorized: 'Unauthorized',
  /** Too many open `/join` sockets in the overlay or the server (HTTP 503). */
  Full: 'Full',
  /** The server's `/healthz` cannot be read (another origin, or not a webrtc-bootstrap
   * server): any of the above. */
  Unknown: 'Unknown',
});

/** The server answered HTTP but refused the `/join` WebSocket. Browsers hide the HTTP
 * status; `refusal` (a `Refusal`) is the client's best reading of the server's
 * `/healthz`, see `classifySocketFailure`. */
export class JoinRefusedError extends BootstrapError {
  constructor(url, reason, refusal = Refusal.Unknown) {
    super('JoinRefused', `the server refused the /join socket at ${url}: ${reason}`);
    this.url = url;
    this.reason = reason;
    this.refusal = refusal;
  }
}

/** No answer within the timeout: usually no root is connected to the server (it drops
 * root-bound signals silently), or the root ignored the request. */
export class NoAnswerError extends BootstrapError {
  constructor(timeoutMs) {
    super('NoAnswer', `no answer within ${timeoutMs} ms: no root may be connected to the server, or the request was ignored`);
    this.timeoutMs = timeoutMs;
  }
}

/** Signaling went through but the data channel did not open within the timeout. */
export class ConnectTimeoutError extends BootstrapError {
  constructor(timeoutMs) {
    super('ConnectTimeout', `the data channel did not open within ${timeoutMs} ms although signaling went through`);
    this.timeoutMs = timeoutMs;
  }
}

/** The server closed the `/join` socket before the remote description arrived. */
export class SignalingClosedError extends BootstrapError {
  constructor() {
    super('SignalingClosed', 'the signaling server closed the /join socket before the negotiation finished');
  }
}

/** ICE found no working candidate pair. */
export class IceFailedError extends BootstrapError {
  constructor() {
    super('IceFailed', 'ICE failed: no working candidate pair between the peers');
  }
}

/** ICE connected but the DTLS handshake (or SCTP above it) failed. */
export class DtlsFailedError extends BootstrapError {
  constructor() {
    super('DtlsFailed', 'the DTLS handshake failed after ICE connected');
  }
}

/** The remote peer closed the connection or its data channel. */
export class ClosedByRemoteError extends BootstrapError {
  constructor() {
    super('ClosedByRemote', 'the connection was closed by the remote peer');
  }
}

/** The connection (or node) was closed locally and can no longer send. */
export class ClosedError extends BootstrapError {
  constructor(what = 'the connection') {
    super('Closed', `${what} is closed`);
  }
}

/** A message is larger than the data channel carries in one message. */
export class MessageTooLargeError extends BootstrapError {
  constructor(size, max) {
    super('MessageTooLarge', `a ${size}-byte message is larger than the largest allowed, ${max} bytes`);
    this.size = size;
    this.max = max;
  }
}

/** A signal handed to an answerer comes from another newcomer. */
export class WrongOriginError extends BootstrapError {
  constructor(expected, got) {
    super('WrongOrigin', `the request comes from ${got}, but this answerer answers ${expected}`);
    this.expected = expected;
    this.got = got;
  }
}

/** `iceFromServer` is on but the server's `/ice-servers` gave no ICE servers: it does
 * not answer, has no TURN configured (404), or answered something else than the expected
 * JSON. A refused join token is a `JoinRefusedError` (`Unauthorized`) instead. */
export class IceServersError extends BootstrapError {
  constructor(url, reason) {
    super('IceServers', `no ICE servers from ${url}: ${reason}`);
    this.url = url;
    this.reason = reason;
  }
}

/** Options that cannot work together, e.g. `relayOnly` without any TURN server. */
export class InvalidOptionsError extends BootstrapError {
  constructor(reason) {
    super('InvalidOptions', `invalid client options: ${reason}`);
    this.reason = reason;
  }
}

/** The browser's WebRTC stack reported an error. */
export class WebRtcError extends BootstrapError {
  constructor(during, cause) {
    super('WebRtc', `WebRTC error while ${during}: ${cause && cause.message ? cause.message : cause}`, { cause });
    this.during = during;
  }
}

// ---------------------------------------------------------------------------------------
// IO-free helpers.

/** Whether `segment` can be a path segment: non-empty, URL-safe, not `.` or `..` (which
 * URL parsers resolve away). Tokens, secrets and overlay names are such segments. */
function isSegment(segment) {
  return typeof segment === 'string' && /^[A-Za-z0-9._~-]+$/.test(segment) && segment !== '.' && segment !== '..';
}

/** Whether `name` is an overlay name the server accepts: 1 to 64 of `A-Z a-z 0-9 - . _ ~`,
 * not `.` or `..`. */
export function isOverlayName(name) {
  return isSegment(name) && name.length <= MAX_OVERLAY_LENGTH;
}

/** `address` fit for an error message: no user info, query or fragment, and the segment
 * after a `t` segment (a token) hidden. */
export function redactAddress(address) {
  if (typeof address !== 'string') return String(address);
  const cut = address.search(/[?#]/);
  const main = cut < 0 ? address : address.slice(0, cut);
  const at = main.indexOf('://');
  const scheme = at < 0 ? '' : main.slice(0, at + 3);
  const parts = main.slice(scheme.length).split('/');
  parts[0] = parts[0].slice(parts[0].lastIndexOf('@') + 1);
  for (let i = parts.length - 1; i >= 1; i -= 1) if (parts[i - 1] === 't') parts[i] = TOKEN_PLACEHOLDER;
  return scheme + parts.join('/') + (cut < 0 ? '' : '?…');
}

/**
 * Checks a server address and says where this client's sockets go on it, as the Rust
 * `Client` does (crates/peer/src/address.rs).
 *
 * The address is `ws://host[:port]` or `wss://host[:port]`, optionally followed by a path
 * prefix (a reverse proxy's), `/o/NAME` (an overlay) and `/t/TOKEN` (a join token in the
 * path, as JS clients carry one). `overlay` (a name) and `token` (a join token, sent in
 * the `bearer` subprotocol) say the same without touching the address; naming two
 * different overlays, or giving two tokens, is an error.
 *
 * Returns `{ base, overlay, joinUrl, joinUrlRedacted, protocols, hasToken, httpUrl,
 * iceServersUrl, iceServersUrlRedacted, optionToken, rootUrl(credential) }`: `base` is
 * what socket paths are appended to (no credential in it), `overlay` the overlay's name
 * (`DEFAULT_OVERLAY` when none is named), `protocols` the `WebSocket` subprotocols of a
 * `/join` socket (or `undefined`), `httpUrl` the same server over HTTP (for `/healthz`),
 * `iceServersUrl` its `[/o/NAME][/t/TOKEN]/ice-servers` (see `iceServersRequest`), and
 * `rootUrl` the root's URL with a secret or root token in its path.
 * @throws {InvalidAddressError | InvalidOverlayError | InvalidTokenError}
 */
export function parseServerAddress(address, { overlay = null, token = null } = {}) {
  const invalid = (reason) => new InvalidAddressError(redactAddress(address), reason);
  if (typeof address !== 'string') throw invalid('it must be a string');
  const scheme = address.startsWith('ws://') ? 'ws://' : address.startsWith('wss://') ? 'wss://' : null;
  if (!scheme) throw invalid('it must start with ws:// or wss://');
  const rest = address.slice(scheme.length);
  if (/[?#\s]/.test(rest)) {
    throw invalid('it must have no query, fragment or spaces (give a join token with the token option)');
  }
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  if (authority === '') throw invalid('it has no host');
  let path = slash < 0 ? '' : rest.slice(slash);
  if (path.endsWith('/')) path = path.slice(0, -1);
  const segments = path === '' ? [] : path.slice(1).split('/');
  if (!segments.every(isSegment)) {
    throw invalid('each path segment must be non-empty, not . or .., and only A-Z a-z 0-9 - . _ ~');
  }
  const takeNamed = (key) => {
    if (segments.length < 2 || segments[segments.length - 2] !== key) return null;
    const value = segments.pop();
    segments.pop();
    return value;
  };
  const pathToken = takeNamed('t');
  const pathOverlay = takeNamed('o');
  if (['join', 'webrtc-bootstrap-root', 't', 'o'].includes(segments[segments.length - 1])) {
    throw invalid("give the server's address (with an optional /o/NAME prefix), not a socket URL: the paths /join and /SECRET/webrtc-bootstrap-root are appended");
  }
  const given = overlay ?? null;
  for (const name of [given, pathOverlay]) {
    if (name !== null && !isOverlayName(name)) throw new InvalidOverlayError(name);
  }
  if (given !== null && pathOverlay !== null && given !== pathOverlay) {
    throw invalid('it names another overlay (/o/NAME) than the overlay option');
  }
  const name = given ?? pathOverlay;
  const optionToken = token ?? null;
  if (optionToken !== null && pathToken !== null) {
    throw invalid('it carries a token (/t/TOKEN) and the token option is set too: give one');
  }
  if (optionToken !== null && !isSegment(optionToken)) throw new InvalidTokenError();
  const prefix = segments.map((segment) => `/${segment}`).join('');
  const base = scheme + authority + prefix + (name === null ? '' : `/o/${name}`);
  const tokenPrefix = (shown) => (pathToken === null ? '' : `/t/${shown}`);
  const tokenPath = (shown) => tokenPrefix(shown) + JOIN_PATH;
  const httpUrl = (scheme === 'wss://' ? 'https://' : 'http://') + authority + prefix;
  // The overlay's prefix over HTTP: `/ice-servers` lives beside `/join`.
  const httpBase = httpUrl + (name === null ? '' : `/o/${name}`);
  return {
    base,
    overlay: name ?? DEFAULT_OVERLAY,
    joinUrl: base + tokenPath(pathToken),
    joinUrlRedacted: base + tokenPath(TOKEN_PLACEHOLDER),
    protocols: optionToken === null ? undefined : [BEARER_SUBPROTOCOL, optionToken],
    hasToken: optionToken !== null || pathToken !== null,
    httpUrl,
    /** `GET` this for TURN credentials (`iceServersRequest` adds the token option). */
    iceServersUrl: httpBase + tokenPrefix(pathToken) + ICE_SERVERS_PATH,
    iceServersUrlRedacted: httpBase + tokenPrefix(TOKEN_PLACEHOLDER) + ICE_SERVERS_PATH,
    /** The join token given as the `token` option (sent in the subprotocol), or null. */
    optionToken,
    /** The root's URL in this overlay; `credential` is its secret or a root token. */
    rootUrl(credential) {
      if (!isSegment(credential)) throw new InvalidSecretError();
      return `${base}/${credential}${ROOT_SUFFIX}`;
    },
  };
}

/** A data channel label as simple-peer makes it: 20 random bytes as 40 hex chars. */
export function randomLabel() {
  const bytes = new Uint8Array(20);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * What a `signal` object is: `'description'` (`{type:'offer'|'answer', sdp}`),
 * `'candidate'` (`{candidate:{candidate, …}}`, simple-peer 9's extra `type` accepted), or
 * `null` for anything else (which simple-peer 6 would die on, so it is never sent).
 */
export function signalKind(signal) {
  if (signal === null || typeof signal !== 'object') return null;
  const c = signal.candidate;
  if (c !== null && typeof c === 'object' && typeof c.candidate === 'string') return 'candidate';
  if ((signal.type === 'offer' || signal.type === 'answer') && typeof signal.sdp === 'string') {
    return 'description';
  }
  return null;
}

/** The candidate signal for an `RTCIceCandidate`, with exactly simple-peer 6's fields. */
export function candidateSignal(candidate) {
  return {
    candidate: {
      candidate: candidate.candidate,
      sdpMLineIndex: candidate.sdpMLineIndex,
      sdpMid: candidate.sdpMid,
    },
  };
}

/** The type of an ICE candidate line (`candidate:… typ relay …`): `'host'`, `'srflx'`,
 * `'prflx'`, `'relay'`, or null (as the Rust `CandidateKind::of_candidate`). */
export function candidateType(candidate) {
  const words = String(candidate ?? '').trim().split(/\s+/);
  const at = words.indexOf('typ');
  const type = at < 0 ? undefined : words[at + 1];
  return ['host', 'srflx', 'prflx', 'relay'].includes(type) ? type : null;
}

/** The candidate types a signaling frame (JSON text) carries: a trickled candidate's,
 * or those of the `a=candidate:` lines of a description. */
export function signaledTypes(frame) {
  let signal;
  try {
    ({ signal } = JSON.parse(frame));
  } catch {
    return [];
  }
  const lines = signalKind(signal) === 'candidate'
    ? [signal.candidate.candidate]
    : signalKind(signal) === 'description'
      ? signal.sdp.split(/\r?\n/).filter((line) => line.startsWith('a=candidate:')).map((line) => line.slice(2))
      : [];
  return lines.map(candidateType).filter((type) => type !== null);
}

/** Whether `url` names a TURN server (`turn:` or `turns:`). */
function isTurnUrl(url) {
  return typeof url === 'string' && /^turns?:/i.test(url);
}

/** Whether `iceServers` (an `RTCIceServer` list) names at least one TURN server. */
export function hasTurnServer(iceServers) {
  return (iceServers ?? []).some((server) => {
    const urls = server && server.urls;
    return Array.isArray(urls) ? urls.some(isTurnUrl) : isTurnUrl(urls);
  });
}

/**
 * The request for TURN credentials of `server` (a `parseServerAddress` result), from a
 * page at `pageOrigin` (e.g. `location.origin`): `{ url, redacted, headers }`.
 *
 * The overlay and a `/t/TOKEN` of the address stay in the path, as for `/join`. A `token`
 * option (which `/join` sends in the subprotocol, a carrier `fetch` lacks) goes in an
 * `Authorization: Bearer` header when the server is the page's own origin; on another
 * origin it goes in `?token=`, because a header would need a CORS preflight the server
 * does not answer, while a plain GET needs none. `redacted` hides the token, for errors.
 */
export function iceServersRequest(server, pageOrigin = null) {
  const token = server.optionToken ?? null;
  const redacted = server.iceServersUrlRedacted;
  if (token === null) return { url: server.iceServersUrl, redacted, headers: {} };
  if (pageOrigin !== null && new URL(server.iceServersUrl).origin === pageOrigin) {
    return { url: server.iceServersUrl, redacted, headers: { Authorization: `Bearer ${token}` } };
  }
  return {
    url: `${server.iceServersUrl}?token=${token}`,
    redacted: `${redacted}?token=${TOKEN_PLACEHOLDER}`,
    headers: {},
  };
}

/**
 * Reads an `/ice-servers` answer (`{"iceServers":[{urls, username?, credential?}], "ttl":
 * seconds}`): `{ iceServers, ttlSeconds }`, the servers as `RTCPeerConnection` takes them
 * (at most `MAX_ICE_SERVERS`, each with at most as many URLs). Throws an `Error` saying
 * what is wrong with anything else.
 */
export function parseIceServersAnswer(answer) {
  if (answer === null || typeof answer !== 'object' || !Array.isArray(answer.iceServers)) {
    throw new Error('it has no iceServers list');
  }
  const iceServers = answer.iceServers.slice(0, MAX_ICE_SERVERS).map((server, i) => {
    if (server === null || typeof server !== 'object') throw new Error(`iceServers[${i}] is not an object`);
    const urls = (Array.isArray(server.urls) ? server.urls : [server.urls]).slice(0, MAX_ICE_SERVERS);
    if (urls.length === 0 || !urls.every((url) => typeof url === 'string' && /^(stuns?|turns?):\S+$/i.test(url))) {
      throw new Error(`iceServers[${i}].urls must be stun:, stuns:, turn: or turns: URLs`);
    }
    const entry = { urls };
    for (const key of ['username', 'credential']) {
      if (server[key] === undefined || server[key] === null) continue;
      if (typeof server[key] !== 'string') throw new Error(`iceServers[${i}].${key} is not a string`);
      entry[key] = server[key];
    }
    return entry;
  });
  if (iceServers.length === 0) throw new Error('its iceServers list is empty');
  const ttl = answer.ttl;
  if (ttl !== undefined && ttl !== null && !(Number.isFinite(ttl) && ttl > 0)) {
    throw new Error('its ttl is not a positive number of seconds');
  }
  return { iceServers, ttlSeconds: ttl ?? ICE_TTL_WHEN_UNSAID };
}

/**
 * The selected candidate pair in an `RTCStatsReport` (or any iterable of stats or a
 * `Map` of them): `{ local, remote }` candidate types, or null. The transport's
 * `selectedCandidatePairId` names it; without one, a pair marked `selected` or
 * nominated and succeeded.
 */
export function selectedPath(report) {
  const stats = [...(typeof report.values === 'function' ? report.values() : report)];
  const byId = new Map(stats.map((entry) => [entry.id, entry]));
  const transport = stats.find((entry) => entry.type === 'transport' && entry.selectedCandidatePairId);
  const pair = transport
    ? byId.get(transport.selectedCandidatePairId)
    : stats.find((entry) => entry.type === 'candidate-pair' && (entry.selected || (entry.nominated && entry.state === 'succeeded')));
  if (!pair) return null;
  const local = byId.get(pair.localCandidateId);
  const remote = byId.get(pair.remoteCandidateId);
  if (!local || !remote) return null;
  return { local: local.candidateType ?? null, remote: remote.candidateType ?? null };
}

/**
 * ICE servers fetched from `/ice-servers`, and when to fetch again. IO-free: the time
 * (ms) is passed in. `current(now)` gives the servers while fresh (before 80 % of their
 * lifetime), else null; `usable(now)` gives them until they expire (for a failed
 * refresh); `failed(now)` delays the next refresh of unexpired ones by 10 s.
 */
export class IceServersCache {
  constructor() {
    this.iceServers = null;
    this.refreshAt = 0;
    this.expiresAt = 0;
  }

  /** An answer (`parseIceServersAnswer`) arrived at `now`. */
  store({ iceServers, ttlSeconds }, now) {
    this.iceServers = iceServers;
    this.refreshAt = now + ttlSeconds * 1000 * ICE_REFRESH_SHARE;
    this.expiresAt = now + ttlSeconds * 1000;
  }

  current(now) {
    return this.iceServers !== null && now < this.refreshAt ? this.iceServers : null;
  }

  usable(now) {
    return this.iceServers !== null && now < this.expiresAt ? this.iceServers : null;
  }

  failed(now) {
    if (this.usable(now)) this.refreshAt = now + ICE_RETRY_AFTER_FAILED_REFRESH_MS;
  }
}

/** Why an incoming signal was dropped (as the Rust negotiation's `Dropped`). */
export const Dropped = Object.freeze({
  Late: 'Late',
  ForeignOrigin: 'ForeignOrigin',
  WrongKind: 'WrongKind',
  Duplicate: 'Duplicate',
  EmptyCandidate: 'EmptyCandidate',
  Malformed: 'Malformed',
});

/**
 * One newcomer/answerer negotiation as a state machine without IO (a port of
 * crates/peer/src/negotiation.rs): which `destination` and `rank` each outgoing signal
 * carries, which incoming signals are applied, queued or dropped.
 *
 * Outgoing calls return the frames (JSON text) to send, in order. `receive` returns an
 * action: `{ kind: 'description', description }` (set it, answer an offer, then call
 * `remoteApplied()` and add the candidates it returns), `{ kind: 'candidate', candidate }`,
 * `{ kind: 'queued' }` or `{ kind: 'dropped', reason }`.
 */
export class Negotiation {
  /** A newcomer's negotiation: signals go to the root until someone answers. */
  static newcomer() {
    return new Negotiation('newcomer', null);
  }

  /** An answerer's negotiation with the newcomer `origin`. */
  static answerer(origin) {
    return new Negotiation('answerer', origin);
  }

  constructor(role, remoteId) {
    this.role = role;
    /** The remote `/join` id: known to the answerer, learned by the newcomer. */
    this.remoteId = remoteId;
    /** This side's own `/join` id, learned from the `destination` of a relayed message. */
    this.localId = null;
    this.rank = 0;
    this.remote = 'missing'; // 'missing' | 'applying' | 'set'
    this.pendingRemote = [];
    this.pendingLocal = [];
    this.descriptionSent = false;
    this.done = false;
  }

  /** Whether the remote description arrived. */
  get hasRemoteDescription() {
    return this.remote !== 'missing';
  }

  /** The local description is ready: its frame, then any candidates gathered before it. */
  localDescription(description) {
    if (this.done || this.descriptionSent) return [];
    this.descriptionSent = true;
    const frames = [this.#frame({ type: description.type, sdp: description.sdp })];
    for (const signal of this.pendingLocal.splice(0)) frames.push(this.#frame(signal));
    return frames;
  }

  /** A local candidate (an `RTCIceCandidate` or its init) was gathered. */
  localCandidate(candidate) {
    if (this.done || !candidate || !candidate.candidate) return [];
    const signal = candidateSignal(candidate);
    if (!this.descriptionSent) {
      this.pendingLocal.push(signal);
      return [];
    }
    return [this.#frame(signal)];
  }

  #frame(signal) {
    // Key order as JS emits it: origin, destination, signal, rank.
    const text = JSON.stringify({ origin: null, destination: this.remoteId, signal, rank: this.rank });
    this.rank += 1;
    return text;
  }

  /** A relayed message arrived (`{origin, destination, signal}`, from the `/join` socket or
   * a request routed to this answerer). */
  receive(message) {
    if (this.done) return { kind: 'dropped', reason: Dropped.Late };
    if (message === null || typeof message !== 'object') {
      return { kind: 'dropped', reason: Dropped.Malformed };
    }
    const origin = typeof message.origin === 'string' && message.origin !== '' ? message.origin : null;
    const kind = signalKind(message.signal);
    if (kind === null) return { kind: 'dropped', reason: Dropped.Malformed };
    if (this.localId === null && typeof message.destination === 'string' && message.destination !== '') {
      // Only messages on our own socket carry our id; the answerer's first request is
      // root-bound (destination null) and teaches nothing.
      this.localId = message.destination;
    }
    if (this.role === 'newcomer' && this.remoteId === null && origin !== null) {
      // JS: `req.origin = req.origin || message.origin`; everything after goes there.
      this.remoteId = origin;
    } else if (origin !== null && origin !== this.remoteId) {
      return { kind: 'dropped', reason: Dropped.ForeignOrigin };
    }
    if (kind === 'description') {
      const expected = this.role === 'newcomer' ? 'answer' : 'offer';
      if (message.signal.type !== expected) return { kind: 'dropped', reason: Dropped.WrongKind };
      if (this.remote !== 'missing') return { kind: 'dropped', reason: Dropped.Duplicate };
      this.remote = 'applying';
      return { kind: 'description', description: { type: message.signal.type, sdp: message.signal.sdp } };
    }
    const c = message.signal.candidate;
    if (c.candidate === '') return { kind: 'dropped', reason: Dropped.EmptyCandidate };
    const candidate = { candidate: c.candidate, sdpMLineIndex: c.sdpMLineIndex ?? null, sdpMid: c.sdpMid ?? null };
    if (this.remote !== 'set') {
      this.pendingRemote.push(candidate);
      return { kind: 'queued' };
    }
    return { kind: 'candidate', candidate };
  }

  /** The remote description is set: the queued remote candidates, in arrival order. */
  remoteApplied() {
    this.remote = 'set';
    return this.pendingRemote.splice(0);
  }

  /** The data channel is open (or the negotiation failed): later signals are dropped. */
  finish() {
    this.done = true;
    this.pendingRemote.length = 0;
    this.pendingLocal.length = 0;
  }
}

// ---------------------------------------------------------------------------------------
// IO.

/**
 * Why a server that answers HTTP refused a `/join` socket of `server` (a
 * `parseServerAddress` result), read from its `/healthz` report (`health`, or `null` when
 * it could not be read). IO-free. Returns a `JoinRefusedError` for `url`.
 */
export function refusalFromHealth(server, url, health) {
  const named = `overlay ${JSON.stringify(server.overlay)}`;
  const overlays = health && Array.isArray(health.overlays) ? health.overlays : null;
  if (overlays === null) {
    const token = server.hasToken ? 'the join token was refused (401)' : 'a join token is required (401)';
    return new JoinRefusedError(url, `the server answers HTTP but refused the WebSocket, and the browser does not say why; one of: ${token}, ${named} does not exist (404), it is full (503), or it is no webrtc-bootstrap server`, Refusal.Unknown);
  }
  const entry = overlays.find((o) => o && o.name === server.overlay);
  if (!entry) {
    return new JoinRefusedError(url, `${named} does not exist on this server (HTTP 404)`, Refusal.NoSuchOverlay);
  }
  const full = (o) => Number.isFinite(o.prospects) && Number.isFinite(o.max_prospects) && o.prospects >= o.max_prospects;
  if (full(entry) || full(health)) {
    return new JoinRefusedError(url, `${named} is full: too many open /join sockets (HTTP 503)`, Refusal.Full);
  }
  const why = server.hasToken
    ? `the join token was refused (HTTP 401): it is invalid, expired, or not for ${named}`
    : `${named} requires a join token (HTTP 401) and none was given`;
  return new JoinRefusedError(url, `${why}; or the server refuses this address for a while after failed attempts (HTTP 429)`, Refusal.Unauthorized);
}

/**
 * Tells why a `/join` WebSocket failed before opening. Browsers give no reason, so ask
 * the same server for `/healthz`: no answer means `UnreachableError`; an answer means a
 * `JoinRefusedError`, made precise from the report when the page may read it (same
 * origin): an unknown overlay, a full one, or else a refused token. Another origin
 * without CORS only tells whether the server answers.
 */
export async function classifySocketFailure(server, url, timeoutMs = 2000) {
  const health = server.httpUrl + '/healthz';
  const ask = (mode) => fetch(health, { mode, cache: 'no-store', signal: AbortSignal.timeout(timeoutMs) });
  let report = null;
  try {
    const response = await ask('cors');
    if (response.ok) report = await response.json().catch(() => null);
  } catch {
    try {
      await ask('no-cors');
    } catch {
      return new UnreachableError(url, 'the WebSocket connection failed and the host does not answer HTTP');
    }
  }
  return refusalFromHealth(server, url, report);
}

/** GETs `/ice-servers` (an `iceServersRequest`) and reads the answer
 * (`parseIceServersAnswer`). @throws {IceServersError | JoinRefusedError} */
async function fetchIceServersAnswer({ url, redacted, headers }, timeoutMs) {
  let response;
  try {
    response = await fetch(url, { headers, cache: 'no-store', credentials: 'omit', signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    throw new IceServersError(redacted, `the server does not answer (${error && error.message ? error.message : error}), or refuses (another origin cannot read a refusal)`);
  }
  if (response.status === 401) {
    throw new JoinRefusedError(redacted, 'the join token is missing or refused (HTTP 401)', Refusal.Unauthorized);
  }
  if (response.status === 429) {
    const retry = response.headers.get('Retry-After');
    throw new JoinRefusedError(redacted, `too many requests from this address (HTTP 429${retry ? `, retry after ${retry} s` : ''})`, Refusal.Unauthorized);
  }
  if (response.status === 404) {
    throw new IceServersError(redacted, 'HTTP 404: the server hands out no TURN credentials (no TURN configured), or the overlay does not exist');
  }
  if (!response.ok) throw new IceServersError(redacted, `HTTP ${response.status}`);
  let body;
  try {
    body = await response.json();
  } catch (error) {
    throw new IceServersError(redacted, `the answer is not JSON: ${error.message}`);
  }
  try {
    return parseIceServersAnswer(body);
  } catch (error) {
    throw new IceServersError(redacted, `invalid answer: ${error.message}`);
  }
}

/**
 * A client of one webrtc-bootstrap server.
 *
 * Options (defaults of the Rust `Options`): `timeout` (ms until the data channel is open,
 * 30000), `connectTimeout` (ms for the WebSocket handshake, 10000), `iceServers` (`[]`:
 * host candidates only; add STUN/TURN for peers behind NAT), `log` (a function receiving
 * debug lines, default none), `overlay` (the overlay's name: sockets go to `/o/NAME/…`;
 * default none, the server's default overlay at `/join`), `token` (a join token, for
 * servers that require one: every `/join` socket of this client, the newcomer's and each
 * answerer's, offers it in the `bearer` subprotocol; default none), `iceFromServer`
 * (`false`; when true, also take ICE servers, short-lived TURN credentials, from the
 * server's `/ice-servers`: see `iceServers()`), `relayOnly` (`false`; when true,
 * `iceTransportPolicy: 'relay'`: only TURN relay candidates are gathered and sent, so no
 * address of this host reaches the remote peer; needs `iceFromServer` or a `turn:` URL in
 * `iceServers`).
 *
 * @throws {InvalidAddressError | InvalidOverlayError | InvalidTokenError | InvalidOptionsError}
 */
export class Client {
  constructor(address, options = {}) {
    this.server = parseServerAddress(address, { overlay: options.overlay, token: options.token });
    this.options = {
      timeout: 30000,
      connectTimeout: 10000,
      iceServers: [],
      iceFromServer: false,
      relayOnly: false,
      log: null,
      overlay: null,
      token: null,
      ...options,
    };
    if (this.options.relayOnly && !this.options.iceFromServer && !hasTurnServer(this.options.iceServers)) {
      throw new InvalidOptionsError('relayOnly needs a TURN server: set iceFromServer, or give a turn: URL in iceServers');
    }
    this.iceCache = new IceServersCache();
    /** The fetch under way, shared by every connection that needs it. */
    this.iceFetch = null;
  }

  /**
   * The ICE servers of a new connection: `options.iceServers`, then, with
   * `iceFromServer`, those the server hands out at `[/o/NAME][/t/TOKEN]/ice-servers`
   * (same origin as the WebSocket, over http or https), kept until 80 % of their `ttl`
   * has passed. Concurrent connections share one fetch. A failed refresh keeps
   * credentials that have not expired yet.
   *
   * Rejects with `IceServersError` (unreachable, 404: no TURN on the server, a bad
   * answer) or `JoinRefusedError` with `refusal` `Unauthorized` (401: the join token is
   * missing or refused; 429: too many requests).
   */
  async iceServers() {
    const configured = this.options.iceServers ?? [];
    if (!this.options.iceFromServer) return configured;
    const fresh = this.iceCache.current(Date.now());
    if (fresh) return [...configured, ...fresh];
    if (this.iceFetch === null) {
      this.iceFetch = this.fetchIceServers().finally(() => {
        this.iceFetch = null;
      });
    }
    return [...configured, ...(await this.iceFetch)];
  }

  async fetchIceServers() {
    const origin = typeof location === 'undefined' ? null : location.origin;
    const request = iceServersRequest(this.server, origin);
    const timeoutMs = Math.min(this.options.connectTimeout, this.options.timeout);
    try {
      const answer = await fetchIceServersAnswer(request, timeoutMs);
      this.iceCache.store(answer, Date.now());
      return answer.iceServers;
    } catch (error) {
      const now = Date.now();
      const kept = this.iceCache.usable(now);
      if (kept) {
        this.iceCache.failed(now);
        if (this.options.log) this.options.log(`refreshing the ICE servers failed, keeping the current ones: ${error.message}`);
        return kept;
      }
      throw error;
    }
  }

  /** The server address with its overlay (`…/o/NAME`), without a trailing `/` or a token. */
  get address() {
    return this.server.base;
  }

  /** The overlay's name (`'default'` for the server's default overlay). */
  get overlay() {
    return this.server.overlay;
  }

  /**
   * Joins as a newcomer. Resolves with the connected `Peer` once the data channel is
   * open; rejects with `UnreachableError`, `JoinRefusedError`, `NoAnswerError` (no root
   * connected?), `ConnectTimeoutError`, `IceFailedError`, `DtlsFailedError`,
   * `ClosedByRemoteError` or `SignalingClosedError`.
   *
   * `label` names the data channel (default `randomLabel()`, as simple-peer); the
   * answerer sees it as `peer.label`. A tree node labels its channel `HEARTBEAT_LABEL`
   * (./overlay.js) to say it supports heartbeats.
   *
   * @throws {InvalidOptionsError} when `label` is not a string of at most 65535 bytes
   */
  join({ label = null } = {}) {
    if (label !== null && (typeof label !== 'string' || new TextEncoder().encode(label).length > 65535)) {
      throw new InvalidOptionsError('a data channel label is a string of at most 65535 bytes');
    }
    return new Session(this, Negotiation.newcomer(), null, label ?? randomLabel()).promise;
  }

  /**
   * Answers a request (`{origin, destination, signal, rank}` as relayed by the server or
   * delegated by a tree parent): opens this client's own `/join` and answers the newcomer
   * `request.origin`. Feed the newcomer's later requests with `answerer.signal(request)`.
   */
  answer(request) {
    if (!request || typeof request.origin !== 'string' || request.origin === '') {
      throw new BootstrapError('Malformed', 'the request has no origin (it was not relayed by a server)');
    }
    return new Answerer(new Session(this, Negotiation.answerer(request.origin), request, null));
  }
}

/** An answer in progress. `connected` resolves with the `Peer` (errors as `join`). */
export class Answerer {
  constructor(session) {
    this.session = session;
    this.origin = session.negotiation.remoteId;
    this.connected = session.promise;
  }

  /** Hands over a later request of the same newcomer. @throws {WrongOriginError} */
  signal(request) {
    if (!request || request.origin !== this.origin) {
      throw new WrongOriginError(this.origin, request ? request.origin : undefined);
    }
    this.session.receive(request);
  }

  /** Gives up: `connected` rejects with `ClosedError`. */
  close() {
    this.session.fail(new ClosedError());
  }
}

/** One negotiation driven to an open data channel (the IO shell around `Negotiation`). */
class Session {
  /** `label` names the newcomer's data channel (null for an answerer, which takes the
   * newcomer's). */
  constructor(client, negotiation, firstRequest, label) {
    this.client = client;
    this.label = label;
    this.options = client.options;
    this.negotiation = negotiation;
    this.settled = false;
    this.outbox = [];
    this.iceConnected = false;
    this.channel = null;
    this.pc = null;
    /** The types of the candidates this side signaled (`candidateType`), in order. */
    this.signaled = [];
    // Incoming signals are applied one at a time, in order.
    this.chain = Promise.resolve();
    this.timers = [];
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.log = (line) => this.options.log && this.options.log(`[${negotiation.role}] ${line}`);
    try {
      this.start(firstRequest);
    } catch (error) {
      this.fail(error instanceof BootstrapError ? error : new WebRtcError('starting', error));
    }
  }

  start(firstRequest) {
    const { timeout, connectTimeout } = this.options;
    this.timers.push(setTimeout(() => {
      this.fail(this.negotiation.hasRemoteDescription ? new ConnectTimeoutError(timeout) : new NoAnswerError(timeout));
    }, timeout));
    this.openSocket(Math.min(connectTimeout, timeout));
    if (!this.options.iceFromServer) {
      this.createConnection(this.options.iceServers);
    } else {
      // The socket opens meanwhile; signals that arrive wait on the chain for the
      // connection.
      this.chain = this.chain.then(async () => {
        let iceServers;
        try {
          iceServers = await this.client.iceServers();
        } catch (error) {
          this.fail(error instanceof BootstrapError ? error : new IceServersError(this.client.server.iceServersUrlRedacted, String(error)));
          return;
        }
        if (this.settled) return;
        try {
          this.createConnection(iceServers);
        } catch (error) {
          this.fail(new WebRtcError('creating the peer connection', error));
        }
      });
    }
    if (this.negotiation.role === 'answerer') this.receive(firstRequest);
  }

  createConnection(iceServers) {
    const pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: this.options.relayOnly ? 'relay' : 'all',
    });
    this.pc = pc;
    pc.onicecandidate = (event) => {
      if (event.candidate) this.sendAll(this.negotiation.localCandidate(event.candidate));
    };
    pc.oniceconnectionstatechange = () => {
      const state = pc.iceConnectionState;
      if (state === 'connected' || state === 'completed') this.iceConnected = true;
      if (state === 'failed') this.fail(new IceFailedError());
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') {
        this.fail(this.iceConnected ? new DtlsFailedError() : new IceFailedError());
      }
    };
    if (this.negotiation.role === 'newcomer') {
      this.watchChannel(pc.createDataChannel(this.label));
      this.chain = this.chain.then(async () => {
        try {
          const offer = await pc.createOffer();
          await pc.setLocalDescription(offer);
          this.sendAll(this.negotiation.localDescription(pc.localDescription));
        } catch (error) {
          this.fail(new WebRtcError('creating the offer', error));
        }
      });
    } else {
      pc.ondatachannel = (event) => {
        if (this.channel === null) this.watchChannel(event.channel);
      };
    }
  }

  openSocket(handshakeTimeout) {
    const server = this.client.server;
    // Errors and logs show the URL without a token.
    const url = server.joinUrlRedacted;
    let socket;
    try {
      socket = new WebSocket(server.joinUrl, server.protocols);
    } catch (error) {
      throw new UnreachableError(url, String(error && error.message ? error.message : error));
    }
    this.socket = socket;
    this.timers.push(setTimeout(() => {
      if (socket.readyState === WebSocket.CONNECTING) {
        this.fail(new UnreachableError(url, `no WebSocket handshake within ${handshakeTimeout} ms`));
      }
    }, handshakeTimeout));
    let opened = false;
    socket.onopen = () => {
      opened = true;
      for (const frame of this.outbox.splice(0)) socket.send(frame);
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== 'string') return; // the server sends text frames only
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        this.log(`ignored a frame that is not JSON: ${event.data.slice(0, 80)}`);
        return;
      }
      this.receive(message);
    };
    socket.onclose = () => {
      this.socket = null;
      if (this.settled) return;
      if (!opened) {
        classifySocketFailure(this.client.server, url).then((error) => this.fail(error));
      } else if (!this.negotiation.hasRemoteDescription) {
        this.fail(new SignalingClosedError());
      }
      // Otherwise enough went through; ICE may still finish without more signals.
    };
  }

  sendAll(frames) {
    for (const frame of frames) {
      this.signaled.push(...signaledTypes(frame));
      if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(frame);
      else if (this.socket && this.socket.readyState === WebSocket.CONNECTING) this.outbox.push(frame);
      // A closed socket: the signal is lost, as with the JS client after its socket closed.
    }
  }

  receive(message) {
    if (this.settled) return;
    const action = this.negotiation.receive(message);
    if (action.kind === 'dropped' || action.kind === 'queued') {
      if (action.kind === 'dropped') this.log(`dropped a signal: ${action.reason}`);
      return;
    }
    this.chain = this.chain.then(() => this.apply(action));
  }

  async apply(action) {
    if (this.settled) return;
    const pc = this.pc;
    if (action.kind === 'candidate') {
      await this.addCandidate(action.candidate);
      return;
    }
    try {
      await pc.setRemoteDescription(action.description);
      if (action.description.type === 'offer') {
        await pc.setLocalDescription(await pc.createAnswer());
        this.sendAll(this.negotiation.localDescription(pc.localDescription));
      }
    } catch (error) {
      this.fail(new WebRtcError('applying the remote description', error));
      return;
    }
    for (const candidate of this.negotiation.remoteApplied()) await this.addCandidate(candidate);
  }

  async addCandidate(candidate) {
    // One bad candidate (an unresolvable .local name, say) must not end the negotiation.
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      this.log(`ignored a remote candidate (${error && error.message}): ${candidate.candidate}`);
    }
  }

  watchChannel(channel) {
    this.channel = channel;
    channel.binaryType = 'arraybuffer';
    const opened = () => this.succeed();
    if (channel.readyState === 'open') queueMicrotask(opened);
    else channel.onopen = opened;
    channel.onclose = () => this.fail(new ClosedByRemoteError());
  }

  succeed() {
    if (this.settled) return;
    this.settled = true;
    this.negotiation.finish();
    this.stop();
    this.closeSocket();
    const peer = new Peer(this.pc, this.channel, {
      remoteId: this.negotiation.remoteId,
      localId: this.negotiation.localId,
      signaledCandidates: this.signaled.slice(),
    });
    this.resolve(peer);
  }

  fail(error) {
    if (this.settled) return;
    this.settled = true;
    this.negotiation.finish();
    this.stop();
    this.closeSocket();
    if (this.channel) this.channel.onclose = this.channel.onopen = null;
    if (this.pc) this.pc.close();
    this.log(`failed: ${error.message}`);
    this.reject(error);
  }

  stop() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.length = 0;
  }

  closeSocket() {
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    // "Closed to conserve resources" (docs/protocol.md#timeouts-and-closing); the server frees our id at once.
    if (socket.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close(1000);
    else if (socket.readyState === WebSocket.OPEN) socket.close(1000);
  }
}

/**
 * A connected data channel. Events: `message` (`event.detail` is the text) and `close`
 * (`event.detail` is `'local'`, `'remote'` or `'failed'`). Messages that arrive before the
 * first `message` listener is added are kept and delivered to it.
 */
export class Peer extends EventTarget {
  constructor(pc, channel, { remoteId = null, localId = null, signaledCandidates = [] } = {}) {
    super();
    this.pc = pc;
    this.channel = channel;
    /** The types (`'host'`, `'srflx'`, `'prflx'`, `'relay'`) of the ICE candidates this
     * side sent to the remote during the negotiation, in order; with `relayOnly` all
     * `'relay'`. */
    this.signaledCandidates = signaledCandidates;
    /** The remote side's `/join` id (the answerer's for a newcomer, the newcomer's for an answerer). */
    this.remoteId = remoteId;
    /** This side's `/join` id, when the server told it (a newcomer learns it). */
    this.localId = localId;
    /** The data channel's label, as the newcomer chose it (`client.join({ label })`). */
    this.label = channel.label;
    this.state = 'connected';
    this.buffered = [];
    this.listening = false;
    const decoder = new TextDecoder();
    channel.onmessage = (event) => {
      const text = typeof event.data === 'string' ? event.data : decoder.decode(event.data);
      if (this.listening) this.dispatchEvent(new CustomEvent('message', { detail: text }));
      else this.buffered.push(text);
    };
    channel.onclose = () => this.closed('remote');
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') this.closed('failed');
      else if (pc.connectionState === 'closed') this.closed('remote');
    };
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type === 'message' && !this.listening) {
      this.listening = true;
      const buffered = this.buffered.splice(0);
      queueMicrotask(() => {
        for (const text of buffered) this.dispatchEvent(new CustomEvent('message', { detail: text }));
      });
    }
  }

  /**
   * The candidate pair the connection uses, from `RTCPeerConnection.getStats()`:
   * `{ local, remote }`, each a candidate type (`'relay'` when that side's traffic goes
   * through its TURN server), or null when there is no selected pair (closed).
   */
  async path() {
    if (this.state !== 'connected') return null;
    return selectedPath(await this.pc.getStats());
  }

  /** The largest message this connection sends. */
  get maxMessageSize() {
    const advertised = this.pc.sctp && this.pc.sctp.maxMessageSize;
    return advertised ? Math.min(advertised, MAX_MESSAGE_SIZE) : MAX_MESSAGE_SIZE;
  }

  /** Sends a text message. @throws {ClosedError | MessageTooLargeError} */
  send(text) {
    if (this.state !== 'connected' || this.channel.readyState !== 'open') throw new ClosedError();
    const size = new TextEncoder().encode(text).length;
    if (size > this.maxMessageSize) throw new MessageTooLargeError(size, this.maxMessageSize);
    this.channel.send(text);
  }

  /** Closes the data channel and the connection. */
  close() {
    this.closed('local');
  }

  closed(reason) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.channel.onmessage = this.channel.onclose = null;
    this.pc.onconnectionstatechange = null;
    try {
      this.channel.close();
      this.pc.close();
    } catch {
      // Already closed.
    }
    this.dispatchEvent(new CustomEvent('close', { detail: reason }));
  }
}
