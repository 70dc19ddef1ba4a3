// Crashed neighbours of a tab, run by bin/bootstrap-node/tests/browser_churn.rs inside a
// loopback-only network namespace, with the server, a Rust root (max degree 1) and a Rust
// node `mid` under it (max degree 2). One Chromium, one tab:
//
// 1. The tab `t1` joins (max degree 1): the root is full, so `mid` answers it. In the same
//    tab a second node, `control`, joins with heartbeats off (`heartbeatInterval: null`),
//    also under `mid`. The test then SIGKILLs `mid` and types `killed`: `t1` must re-join
//    (under the root) within a few seconds, through heartbeats, while `control` is still
//    attached to the dead `mid` (only ICE would tell it).
// 2. The test starts a Rust node `kid` (the root is full again, so `t1` answers it) and
//    types `kid`; once `t1` has its child, its renderer is crashed (CDP `Page.crash`:
//    nothing is closed, the tab just stops). The test checks that `kid` re-joins quickly.
//
// Environment: PAGE_URL, CHROMIUM. Reads lines from stdin, prints `DRIVE <json>` steps:
//   {"step":"joined","parent":id,"controlParent":id}
//                                        t1 and control are both under `mid` (each link
//                                        has its own id: one answer, one /join socket)
//   {"step":"rejoined","afterMs":n,"parent":id,"controlParent":id}
//   {"step":"crashed"}                   t1 had `kid` as its child and crashed
//   {"step":"done"}

import { createInterface } from 'node:readline';

import { fail, joinTab, report, required, run, waitAll, withBrowser } from './pages.mjs';

const PAGE_URL = required('PAGE_URL');
/** How long the test may take to type its next line. */
const INPUT_WAIT_MS = 30000;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Waits for the test to type `expected`. */
async function input(expected) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the test never typed ${expected}`)), INPUT_WAIT_MS);
  });
  try {
    const { value, done } = await Promise.race([lines.next(), timeout]);
    if (done || value.trim() !== expected) fail(`expected ${expected} on stdin, got ${done ? 'EOF' : value}`);
  } finally {
    clearTimeout(timer);
  }
}

/** The node called `name` in `tree`, or null. */
function findNode(tree, name) {
  if (!tree) return null;
  if (tree.name === name) return tree;
  for (const child of tree.children) {
    const found = findNode(child, name);
    if (found) return found;
  }
  return null;
}

/** The control node's state, from inside the tab. */
function controlInfo(page) {
  return page.evaluate(() => window.control.info());
}

async function scenario(context) {
  const page = await joinTab(context, PAGE_URL, { name: 't1', maxDegree: 1, timeout: 20000 });
  // The control node: same page, same client, no heartbeats.
  await page.evaluate(async () => {
    const { Node } = await import(new URL('overlay.js', location.href).href);
    window.control = await Node.join(window.demo.client, { name: 'control', heartbeatInterval: null });
  });
  const control = await controlInfo(page);
  // mid reports control, which reports nothing (no topology), as a placeholder.
  const placeholder = `?${control.id.slice(0, 8)}`;
  const [joined] = await waitAll([page], 't1 and control to show under mid', ([s]) =>
    s.state === 'connected' && s.parentName === 'mid'
    && (findNode(s.tree, 'mid')?.children ?? []).some((c) => c.name === placeholder));
  report({ step: 'joined', parent: joined.parent, controlParent: control.parent });

  await input('killed');
  const killed = Date.now();
  const [rejoined] = await waitAll([page], 't1 to re-join under the root', ([s]) =>
    s.state === 'connected' && s.parent !== '' && s.parent !== joined.parent, 15000);
  const afterMs = Date.now() - killed;
  const still = await controlInfo(page);
  report({ step: 'rejoined', afterMs, parent: rejoined.parent, controlParent: still.parent, controlState: still.state });
  // The control node has served its purpose; it would re-join once ICE gives up.
  await page.evaluate(() => window.control.close());

  await input('kid');
  await waitAll([page], 't1 to answer kid', ([s]) => s.children.length === 1, 20000);
  const crashed = page.waitForEvent('crash', { timeout: 10000 });
  const cdp = await context.newCDPSession(page);
  // Never answered: the renderer is gone.
  cdp.send('Page.crash').catch(() => {});
  await crashed;
  report({ step: 'crashed' });
  await input('done');
  report({ step: 'done' });
}

run(() => withBrowser(new URL(PAGE_URL).origin, scenario));
