// Unit tests of the browser client's TURN pieces (IO-free), with Node's built-in test
// runner: `node --test ice.test.mjs` (run by bin/bootstrap-node/tests/browser_turn.rs).
// They mirror the Rust peer library: the `/ice-servers` URL beside `/join` (overlay and
// token carriers), the answer's shape, the 80 % refresh, candidate types and the
// selected pair read from `getStats()`.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Client, ICE_TTL_WHEN_UNSAID, IceServersCache, IceServersError, InvalidOptionsError, MAX_ICE_SERVERS,
  candidateType, hasTurnServer, iceServersRequest, parseIceServersAnswer, parseServerAddress, selectedPath,
  signaledTypes,
} from '../../web/bootstrap.js';
import { demoOptions, describePath, failureMessage } from '../../web/demo.js';

const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJqb2luIn0.c2ln';

test('/ice-servers sits beside /join: same origin over http(s), overlay and path token', () => {
  const url = (address, options) => parseServerAddress(address, options).iceServersUrl;
  assert.equal(url('ws://127.0.0.1:5000'), 'http://127.0.0.1:5000/ice-servers');
  assert.equal(url('wss://example.org/'), 'https://example.org/ice-servers');
  assert.equal(url('wss://example.org/proxy/o/chat'), 'https://example.org/proxy/o/chat/ice-servers');
  assert.equal(url('ws://h:1', { overlay: 'chat' }), 'http://h:1/o/chat/ice-servers');
  const inPath = parseServerAddress(`ws://h:1/o/chat/t/${TOKEN}`);
  assert.equal(inPath.iceServersUrl, `http://h:1/o/chat/t/${TOKEN}/ice-servers`);
  assert.equal(inPath.iceServersUrlRedacted, 'http://h:1/o/chat/t/<token>/ice-servers');
  // A path token needs no other carrier.
  assert.deepEqual(iceServersRequest(inPath, 'http://h:1').headers, {});
});

test('a token option rides in Authorization on the same origin, in ?token= on another', () => {
  const server = parseServerAddress('ws://h:1', { overlay: 'chat', token: TOKEN });
  const same = iceServersRequest(server, 'http://h:1');
  assert.equal(same.url, 'http://h:1/o/chat/ice-servers');
  assert.deepEqual(same.headers, { Authorization: `Bearer ${TOKEN}` });
  const other = iceServersRequest(server, 'http://elsewhere:8000');
  assert.equal(other.url, `http://h:1/o/chat/ice-servers?token=${TOKEN}`);
  assert.deepEqual(other.headers, {});
  // Outside a page (no origin), the query too.
  assert.equal(iceServersRequest(server, null).url, other.url);
  for (const request of [same, other]) assert.ok(!request.redacted.includes(TOKEN), request.redacted);
  assert.equal(other.redacted, 'http://h:1/o/chat/ice-servers?token=<token>');
  const plain = iceServersRequest(parseServerAddress('wss://example.org'), 'https://example.org');
  assert.deepEqual(plain, { url: 'https://example.org/ice-servers', redacted: 'https://example.org/ice-servers', headers: {} });
});

test('the server\'s answer is read as RTCPeerConnection takes it, anything else refused', () => {
  const answer = {
    iceServers: [
      { urls: ['turn:127.0.0.1:3478?transport=udp'], username: '1700000000:alice', credential: 'c2VjcmV0' },
      { urls: 'stun:127.0.0.1:3478' },
    ],
    ttl: 86400,
  };
  assert.deepEqual(parseIceServersAnswer(answer), {
    iceServers: [
      { urls: ['turn:127.0.0.1:3478?transport=udp'], username: '1700000000:alice', credential: 'c2VjcmV0' },
      { urls: ['stun:127.0.0.1:3478'] },
    ],
    ttlSeconds: 86400,
  });
  assert.equal(parseIceServersAnswer({ iceServers: [{ urls: 'turn:h' }] }).ttlSeconds, ICE_TTL_WHEN_UNSAID);
  const many = { iceServers: Array.from({ length: 40 }, () => ({ urls: 'turn:h' })) };
  assert.equal(parseIceServersAnswer(many).iceServers.length, MAX_ICE_SERVERS);
  for (const bad of [
    null, 5, [], {}, { iceServers: [] }, { iceServers: 'turn:h' }, { iceServers: [null] },
    { iceServers: [{ urls: [] }] }, { iceServers: [{ urls: 'http://h' }] }, { iceServers: [{ urls: ['turn:h', 7] }] },
    { iceServers: [{ urls: 'turn:h', username: 5 }] }, { iceServers: [{ urls: 'turn:h' }], ttl: -1 },
    { iceServers: [{ urls: 'turn:h' }], ttl: 'long' },
  ]) {
    assert.throws(() => parseIceServersAnswer(bad), Error, JSON.stringify(bad));
  }
});

test('credentials are kept until 80 % of their lifetime, then fetched again', () => {
  const cache = new IceServersCache();
  assert.equal(cache.current(0), null);
  const servers = [{ urls: ['turn:h'] }];
  cache.store({ iceServers: servers, ttlSeconds: 100 }, 1000);
  assert.equal(cache.current(1000), servers);
  assert.equal(cache.current(80999), servers);
  assert.equal(cache.current(81000), null, 'stale at 80 %');
  assert.equal(cache.usable(81000), servers, 'still valid for a failed refresh');
  cache.failed(81000);
  assert.equal(cache.current(90999), servers, 'a failed refresh retries 10 s later');
  assert.equal(cache.usable(101000), null, 'expired');
  cache.failed(101000);
  assert.equal(cache.current(101000), null);
});

test('candidate types, in trickled candidates and in descriptions', () => {
  const relay = 'candidate:1 1 udp 16777215 127.0.0.1 49152 typ relay raddr 127.0.0.1 rport 5000';
  assert.equal(candidateType(relay), 'relay');
  assert.equal(candidateType('candidate:2 1 udp 2130706431 10.0.0.1 9 typ host generation 0'), 'host');
  assert.equal(candidateType('candidate:3 1 udp 1 x 9 typ'), null);
  assert.equal(candidateType('typ bogus'), null);
  assert.equal(candidateType(undefined), null);
  const frame = (signal) => JSON.stringify({ origin: null, destination: null, signal, rank: 0 });
  assert.deepEqual(signaledTypes(frame({ candidate: { candidate: relay, sdpMLineIndex: 0, sdpMid: '0' } })), ['relay']);
  const sdp = `v=0\r\na=mid:0\r\na=${relay}\r\na=candidate:5 1 udp 1 h 1 typ srflx raddr h rport 1\r\n`;
  assert.deepEqual(signaledTypes(frame({ type: 'answer', sdp })), ['relay', 'srflx']);
  assert.deepEqual(signaledTypes('not json'), []);
});

test('the selected pair comes from the transport, or from a nominated pair', () => {
  const candidates = [
    { id: 'L1', type: 'local-candidate', candidateType: 'relay' },
    { id: 'R1', type: 'remote-candidate', candidateType: 'relay' },
    { id: 'L2', type: 'local-candidate', candidateType: 'host' },
    { id: 'R2', type: 'remote-candidate', candidateType: 'prflx' },
  ];
  const pairs = [
    { id: 'P1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', state: 'succeeded', nominated: true },
    { id: 'P2', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R2', state: 'succeeded', nominated: true },
  ];
  const report = new Map([...candidates, ...pairs, { id: 'T', type: 'transport', selectedCandidatePairId: 'P2' }].map((s) => [s.id, s]));
  assert.deepEqual(selectedPath(report), { local: 'host', remote: 'prflx' });
  assert.deepEqual(selectedPath([...candidates, ...pairs]), { local: 'relay', remote: 'relay' });
  assert.equal(selectedPath([...candidates]), null);
  assert.equal(describePath({ local: 'relay', remote: 'relay' }), 'relayed through TURN (both sides: relay → relay)');
  assert.equal(describePath({ local: 'host', remote: 'relay' }), 'relayed through TURN (the other side: host → relay)');
  assert.equal(describePath({ local: 'host', remote: 'prflx' }), 'direct (host → prflx)');
  assert.equal(describePath(null), 'unknown');
});

test('relayOnly needs a TURN server; the demo turns both options on with ?relay=1', () => {
  assert.throws(() => new Client('ws://h:1', { relayOnly: true }), InvalidOptionsError);
  assert.throws(() => new Client('ws://h:1', { relayOnly: true, iceServers: [{ urls: 'stun:h' }] }), /relayOnly needs a TURN server/);
  assert.ok(new Client('ws://h:1', { relayOnly: true, iceFromServer: true }));
  assert.ok(new Client('ws://h:1', { relayOnly: true, iceServers: [{ urls: ['stun:h', 'turns:h:5349'] }] }));
  assert.ok(hasTurnServer([{ urls: 'turn:h' }]));
  assert.ok(!hasTurnServer([{ urls: ['stun:h'] }, null]));
  const page = { protocol: 'http:', host: 'h:1' };
  const pick = (search) => {
    const { relayOnly, iceFromServer } = demoOptions(search, page);
    return { relayOnly, iceFromServer };
  };
  assert.deepEqual(pick(''), { relayOnly: false, iceFromServer: false });
  assert.deepEqual(pick('?relay=1'), { relayOnly: true, iceFromServer: true });
  assert.deepEqual(pick('?relay=true&ice=server'), { relayOnly: true, iceFromServer: true });
  assert.deepEqual(pick('?ice=server'), { relayOnly: false, iceFromServer: true });
  assert.deepEqual(pick('?relay=0'), { relayOnly: false, iceFromServer: false });
  const error = new IceServersError('http://h:1/ice-servers', 'HTTP 404: the server hands out no TURN credentials');
  assert.equal(error.code, 'IceServers');
  const message = failureMessage(error, 'ws://h:1');
  assert.equal(message.title, 'No TURN credentials from the server');
  assert.match(message.text, /--turn-secret-file/);
  assert.equal(failureMessage(new InvalidOptionsError('x'), 'ws://h:1').title, 'Invalid options');
});
