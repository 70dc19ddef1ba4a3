// The live overlay demo: this tab joins the tree as a browser node, shows its state, a
// message log, a box to send a message to everyone, and the whole tree as the root shares
// it. Served at `/` by `bootstrap-server --public web`, with `bootstrap-node root` running.
//
// Query options: `overlay` (the overlay to join: a room, shared as a link; default the
// server's default overlay), `token` (a join token, for servers that require one), `name`
// (shown in the tree), `maxDegree` (children this tab accepts, default 2), `timeout` (ms
// to join, default 30000), `server` (default: the page's host), `relay=1` (relay every
// connection through TURN, with credentials from the server's `/ice-servers`: the
// client's `relayOnly` and `iceFromServer`), `ice=server` (take TURN credentials from
// the server but allow direct paths too: `iceFromServer` alone).
//
// Stable hooks for tests: `#app[data-state|data-name|data-overlay|data-id|data-parent|
// data-parent-name|data-children|data-path]` (`data-path`: the candidate types of the
// parent link's selected pair, `local/remote`, e.g. `relay/relay`), `#tree[data-tree]` (the shared tree as JSON),
// `#log li.msg[data-from][data-text]`, `#error[data-code|data-refusal]`.

import { Client, DEFAULT_OVERLAY, Refusal } from './bootstrap.js';
import { Node } from './overlay.js';

/** The options from the query string, with defaults. */
export function demoOptions(search, location) {
  const params = new URLSearchParams(search);
  const number = (key, fallback) => {
    const value = Number.parseInt(params.get(key) ?? '', 10);
    return Number.isFinite(value) && value >= 0 ? value : fallback;
  };
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const random = Math.floor(Math.random() * 0x10000).toString(16).padStart(4, '0');
  const timeout = number('timeout', 30000);
  return {
    server: params.get('server') || scheme + location.host,
    name: (params.get('name') || `tab-${random}`).slice(0, 40),
    maxDegree: number('maxDegree', 2),
    timeout,
    requestTimeout: number('requestTimeout', timeout),
    // Empty means absent; an invalid name is left for the client to refuse, loudly.
    overlay: params.get('overlay') || null,
    token: params.get('token') || null,
    ...iceOptions(params),
    debug: params.has('debug'),
  };
}

/** `relay=1` (or `true`, `yes`): relay only, with TURN credentials from the server;
 * `ice=server`: TURN credentials from the server, direct paths allowed. */
function iceOptions(params) {
  const relayOnly = ['1', 'true', 'yes'].includes((params.get('relay') ?? '').toLowerCase());
  return { relayOnly, iceFromServer: relayOnly || params.get('ice') === 'server' };
}

/** How a link's path reads: `relay/relay` → "relayed through TURN (both sides)". */
export function describePath(path) {
  if (!path) return 'unknown';
  const relayed = [path.local === 'relay' ? 'this side' : null, path.remote === 'relay' ? 'the other side' : null].filter(Boolean);
  if (relayed.length === 0) return `direct (${path.local} → ${path.remote})`;
  return `relayed through TURN (${relayed.length === 2 ? 'both sides' : relayed[0]}: ${path.local} → ${path.remote})`;
}

/** The link that brings someone else into this tab's overlay: this page's, with every
 * option kept (`overlay`, `server`, and any other) but the two that belong to this tab,
 * `token` and `name`. */
export function roomLink(search, location) {
  const params = new URLSearchParams(search);
  params.delete('token');
  params.delete('name');
  const query = params.toString();
  return `${location.origin}${location.pathname}${query ? `?${query}` : ''}`;
}

/** The `bootstrap-node` flags that name `overlay` (none for the default overlay). */
function overlayFlag(overlay) {
  return overlay && overlay !== DEFAULT_OVERLAY ? ` --overlay ${overlay}` : '';
}

/** What to tell a user about a failed join: `{ title, text }`. `overlay` is the overlay
 * the tab tried, `hasToken` whether it had a join token. */
export function failureMessage(error, server, { overlay = DEFAULT_OVERLAY, hasToken = false } = {}) {
  const named = `overlay "${overlay}"`;
  switch (error && error.code) {
    case 'InvalidOverlay':
      return {
        title: 'Invalid overlay name',
        text: `${JSON.stringify(String(error.overlay))} cannot name an overlay: use 1 to 64 letters, digits, - . _ or ~ (for example ?overlay=chat).`,
      };
    case 'InvalidToken':
      return {
        title: 'Invalid join token',
        text: 'The token of this link (?token=…) cannot be a join token: a JWT only holds A-Z a-z 0-9 - . _ ~. Ask for a new link.',
      };
    case 'InvalidAddress':
      return { title: 'Invalid server address', text: error.message };
    case 'InvalidOptions':
      return { title: 'Invalid options', text: error.message };
    case 'IceServers':
      return {
        title: 'No TURN credentials from the server',
        text: `This tab asked ${server} for TURN credentials (?relay=1 or ?ice=server), and got none: ${error.reason}. Start bootstrap-server with --turn-secret-file and --turn-uri, or open the page without ?relay= and ?ice=.`,
      };
    case 'Unreachable':
      return {
        title: 'The bootstrap server is unreachable',
        text: `Nothing answers at ${server}. Is bootstrap-server running there (bootstrap-server --secret S --port P --public web)?`,
      };
    case 'JoinRefused':
      return joinRefusedMessage(error, server, named, overlay, hasToken);
    case 'NoAnswer':
      return {
        title: 'No root is answering',
        text: `Nobody answered within ${error.timeoutMs / 1000} s. No root seems to be connected to ${named}: start one with bootstrap-node root --url ${server}${overlayFlag(overlay)} --secret S (or --token ROOT_TOKEN).`,
      };
    case 'ConnectTimeout':
      return {
        title: 'Timed out while connecting',
        text: `Signaling worked, but the WebRTC connection did not open within ${error.timeoutMs / 1000} s. A firewall may block UDP between the peers.`,
      };
    case 'IceFailed':
      return {
        title: 'No network path to the peer',
        text: 'ICE found no working connection between this tab and the peer that answered (NAT or firewall; a STUN/TURN server may help, try ?relay=1 on a server with TURN).',
      };
    case 'SignalingClosed':
      return {
        title: 'The server closed the connection',
        text: 'The bootstrap server closed this tab\'s /join socket before an answer arrived (server restarted or timed out).',
      };
    default:
      return { title: 'Could not join the overlay', text: String(error && error.message ? error.message : error) };
  }
}

function joinRefusedMessage(error, server, named, overlay, hasToken) {
  switch (error.refusal) {
    case Refusal.NoSuchOverlay:
      return {
        title: 'No such overlay',
        text: `${server} has no ${named}. Check the link, or configure the overlay on the server (bootstrap-server --overlay ${overlay}=SECRET).`,
      };
    case Refusal.Full:
      return {
        title: 'The overlay is full',
        text: `${server} refused the /join WebSocket: ${named} has as many joining peers as it allows. Try again in a moment.`,
      };
    case Refusal.Unauthorized:
      return hasToken
        ? {
          title: 'The join token was refused',
          text: `${server} refused this tab's join token for ${named} (HTTP 401): it is invalid, expired, or for another overlay. Ask for a new link with a fresh &token=….`,
        }
        : {
          title: 'This overlay needs a join token',
          text: `${server} only lets peers with a join token into ${named} (HTTP 401). Open a link with &token=… (bootstrap-server token --aud join --overlay ${overlay} mints one).`,
        };
    default:
      return {
        title: 'The server refused to let this tab join',
        text: `${server} answers, but refused the /join WebSocket: a join token may be missing or refused, ${named} may not exist or be full, or it is not a webrtc-bootstrap server.`,
      };
  }
}

/**
 * Positions for drawing a tree: leaves side by side, each parent centred over its
 * children. Returns `{ nodes: [{name, x, y, parent}], width, height }` in abstract units
 * (one column per leaf, one row per level).
 */
export function layoutTree(tree) {
  const nodes = [];
  let nextLeaf = 0;
  let depthMax = 0;
  const visit = (node, depth, parent) => {
    const entry = { name: node.name, x: 0, y: depth, parent };
    nodes.push(entry);
    depthMax = Math.max(depthMax, depth);
    const children = Array.isArray(node.children) ? node.children : [];
    if (children.length === 0) {
      entry.x = nextLeaf;
      nextLeaf += 1;
    } else {
      const xs = children.map((child) => visit(child, depth + 1, entry).x);
      entry.x = (Math.min(...xs) + Math.max(...xs)) / 2;
    }
    return entry;
  };
  if (tree && typeof tree === 'object') visit(tree, 0, null);
  return { nodes, width: Math.max(1, nextLeaf), height: depthMax + 1 };
}

/** Number of nodes in a tree. */
export function treeSize(tree) {
  if (!tree || typeof tree !== 'object') return 0;
  return 1 + (Array.isArray(tree.children) ? tree.children.reduce((n, c) => n + treeSize(c), 0) : 0);
}

/** The name of the parent of the node named `name` in `tree`, or null. */
export function parentName(tree, name) {
  if (!tree || !Array.isArray(tree.children)) return null;
  for (const child of tree.children) {
    if (child.name === name) return tree.name;
    const found = parentName(child, name);
    if (found !== null) return found;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// The page.

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function drawTree(figure, tree, ownName) {
  figure.dataset.tree = JSON.stringify(tree);
  figure.replaceChildren();
  const { nodes, width, height } = layoutTree(tree);
  const colW = 160;
  const rowH = 90;
  const pad = 40;
  const scale = (node) => ({ x: pad + node.x * colW + colW / 2, y: pad + node.y * rowH });
  const w = width * colW + 2 * pad;
  const h = (height - 1) * rowH + 2 * pad;
  const root = svg('svg', {
    viewBox: `0 0 ${w} ${h}`,
    width: w,
    height: h,
    role: 'img',
    'aria-label': 'the overlay tree',
  });
  for (const node of nodes) {
    if (!node.parent) continue;
    const a = scale(node.parent);
    const b = scale(node);
    root.append(svg('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
  }
  for (const node of nodes) {
    const { x, y } = scale(node);
    const kind = node.name === ownName ? 'self' : !node.parent ? 'root' : node.name.startsWith('?') ? 'unknown' : 'other';
    const group = svg('g', { class: `node ${kind}`, 'data-name': node.name });
    group.append(svg('circle', { cx: x, cy: y, r: 16 }));
    const label = svg('text', { x: x + 24, y: y + 5 });
    label.textContent = node.name;
    group.append(label);
    root.append(group);
  }
  figure.append(root);
}

function clock() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

function main() {
  const options = demoOptions(location.search, location);
  const $ = (id) => document.getElementById(id);
  const app = $('app');
  const log = $('log');
  let node = null;
  let tree = null;

  const overlay = options.overlay ?? DEFAULT_OVERLAY;
  document.title = `${options.name} · ${overlay} · webrtc-bootstrap demo`;
  $('me-name').textContent = options.name;
  $('me-overlay').textContent = overlay;
  $('server').textContent = options.server;
  $('overlay').textContent = overlay;
  const link = roomLink(location.search, location);
  $('room-link').href = link;
  $('room-link').textContent = link;
  $('room-token-note').hidden = !options.token;
  app.dataset.name = options.name;
  app.dataset.overlay = overlay;

  const setState = (state, text) => {
    app.dataset.state = state;
    $('me-state').dataset.state = state;
    $('me-state').textContent = state;
    $('state-text').textContent = text;
    const ready = state === 'connected';
    $('text').disabled = !ready;
    $('send-button').disabled = !ready;
  };

  const addLog = (entry) => {
    const item = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = clock();
    item.append(time);
    if (entry.system) {
      item.className = 'system';
      item.append(entry.system);
    } else {
      item.className = entry.from === options.name ? 'msg mine' : 'msg';
      item.dataset.from = entry.from;
      item.dataset.text = entry.text;
      const from = document.createElement('span');
      from.className = 'from';
      from.textContent = entry.from;
      const text = document.createElement('span');
      text.textContent = entry.text;
      item.append(from, text);
    }
    log.prepend(item);
  };

  const showPath = async () => {
    const peer = node && node.parent ? node.parent.peer : null;
    const path = peer ? await peer.path().catch(() => null) : null;
    app.dataset.path = path ? `${path.local}/${path.remote}` : '';
    $('path').textContent = peer ? describePath(path) : '–';
  };

  const showLinks = () => {
    if (!node) return;
    const info = node.info();
    app.dataset.id = info.id ?? '';
    app.dataset.parent = info.parent ?? '';
    app.dataset.children = JSON.stringify(info.children);
    $('own-id').textContent = info.id ?? '–';
    const pname = parentName(tree, options.name);
    app.dataset.parentName = pname ?? '';
    $('parent').textContent = info.parent
      ? `${pname ?? '?'} (answered from /join ${info.parent.slice(0, 8)}…)`
      : info.state === 'rejoining' ? 're-joining…' : '–';
    const list = $('children');
    list.replaceChildren();
    if (info.children.length === 0) {
      const none = document.createElement('li');
      none.className = 'none';
      none.textContent = 'none';
      list.append(none);
    }
    const childNames = (findNode(tree, options.name)?.children ?? []).map((c) => c.name);
    info.children.forEach((id, i) => {
      const item = document.createElement('li');
      item.dataset.id = id;
      item.textContent = `${childNames[i] ?? '?'} (/join ${id.slice(0, 8)}…)`;
      list.append(item);
    });
    if (info.candidates > 0) {
      const item = document.createElement('li');
      item.className = 'none';
      item.textContent = `${info.candidates} connecting…`;
      list.append(item);
    }
  };

  const start = async () => {
    $('error').hidden = true;
    setState('connecting', `joining through ${options.server}…`);
    let client;
    try {
      client = new Client(options.server, {
        timeout: options.timeout,
        overlay: options.overlay,
        token: options.token,
        iceFromServer: options.iceFromServer,
        relayOnly: options.relayOnly,
        log: options.debug ? (line) => console.debug(`[${options.name}] ${line}`) : null,
      });
      node = await Node.join(client, {
        name: options.name,
        maxDegree: options.maxDegree,
        requestTimeout: options.requestTimeout,
        reportTopology: true,
      });
    } catch (error) {
      const message = failureMessage(error, options.server, { overlay, hasToken: Boolean(options.token) });
      setState('failed', message.title);
      $('error').dataset.code = error.code ?? 'Error';
      $('error').dataset.refusal = error.refusal ?? '';
      $('error-title').textContent = message.title;
      $('error-text').textContent = message.text;
      $('error').hidden = false;
      addLog({ system: `${message.title}: ${error.message}` });
      return;
    }
    window.demo = { node, client, options };
    setState('connected', `connected to overlay ${overlay}`);
    addLog({ system: `joined overlay ${overlay}` });
    node.addEventListener('state', (event) => {
      const info = event.detail;
      if (info.state === 'rejoining') setState('rejoining', 'parent left; re-joining…');
      else if (info.state === 'connected' && app.dataset.state !== 'connected') setState('connected', `connected to overlay ${overlay}`);
      showLinks();
    });
    node.addEventListener('parent-close', () => addLog({ system: 'parent left; re-joining' }));
    node.addEventListener('parent-connect', () => {
      addLog({ system: 'connected to a parent' });
      showPath();
    });
    node.addEventListener('parent-close', () => showPath());
    node.addEventListener('child-connect', () => addLog({ system: 'a child joined under this tab' }));
    node.addEventListener('child-close', () => addLog({ system: 'a child left' }));
    node.addEventListener('tree', (event) => {
      tree = event.detail;
      drawTree($('tree'), tree, options.name);
      $('tree-count').textContent = `(${treeSize(tree)} nodes)`;
      showLinks();
    });
    node.addEventListener('data', (event) => {
      const { data } = event.detail;
      if (data && typeof data.from === 'string' && typeof data.text === 'string') {
        addLog({ from: data.from, text: data.text });
      } else {
        addLog({ system: `data: ${JSON.stringify(data).slice(0, 200)}` });
      }
    });
    showLinks();
    showPath();
  };

  $('send').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('text');
    const text = input.value.trim();
    if (!text || !node) return;
    try {
      // Up to the root, which broadcasts it to the whole tree (this tab included).
      node.sendToRoot({ from: options.name, text });
      input.value = '';
    } catch (error) {
      addLog({ system: `not sent: ${error.message}` });
    }
  });
  $('retry').addEventListener('click', () => start());
  window.addEventListener('pagehide', () => node && node.close());
  start();
}

function findNode(tree, name) {
  if (!tree) return null;
  if (tree.name === name) return tree;
  for (const child of tree.children ?? []) {
    const found = findNode(child, name);
    if (found) return found;
  }
  return null;
}

if (typeof document !== 'undefined') main();
