// The demo scenario in headless Chromium, run by bin/bootstrap-node/tests/browser.rs inside
// a loopback-only network namespace, with the server and a Rust root (max degree 2).
//
// Environment:
//   PAGE_URL       the demo page, e.g. http://127.0.0.1:PORT/
//   NO_ROOT_URL    ws:// URL of a server with no root (for the "no root" message)
//   DEAD_URL       ws:// URL where nothing listens (for the "unreachable" message)
//   SCREENSHOT     where to save the screenshot (PNG)
//   CHROMIUM       the browser (default /usr/bin/chromium)
//   PAGES          how many tabs join (default 4)
//   EXTRA_NODE     name of a non-browser node the test adds after the tabs joined
//   EXTRA_TEXT     a line that node sends to everyone (checked on every tab)
//
// Prints one line per step for the Rust test, `DRIVE <json>`:
//   {"step":"pages-joined"}   (the test then starts EXTRA_NODE)
//   {"step":"joined","pages":[{name,id,parent,children,tree,state,…}]}
//   {"step":"messages","texts":[{from,text}]}
//   {"step":"failures","failures":{code: title}}
//   {"step":"screenshot",…}, {"step":"done"}
// and exits non-zero with a reason on any failed check. Every wait has a timeout.

import {
  everyPageShows, fail, joinTab, openTab, report, required, run, sendFrom, waitAll, withBrowser,
} from './pages.mjs';

const PAGE_URL = required('PAGE_URL');
const PAGES = Number(process.env.PAGES || 4);
const EXTRA_NODE = process.env.EXTRA_NODE || null;
const EXTRA_TEXT = process.env.EXTRA_TEXT || null;

function treeSize(tree) {
  return tree ? 1 + tree.children.reduce((n, c) => n + treeSize(c), 0) : 0;
}

function treeNames(tree) {
  return tree ? [tree.name, ...tree.children.flatMap(treeNames)] : [];
}

function canonical(tree) {
  return {
    name: tree.name,
    children: tree.children.map(canonical).sort((a, b) => a.name.localeCompare(b.name)),
  };
}

async function scenario(context) {
  // One tab at a time, so the tree's shape depends only on the degrees and the hash.
  const pages = [];
  for (let i = 1; i <= PAGES; i += 1) {
    pages.push(await joinTab(context, PAGE_URL, { name: `p${i}`, maxDegree: 2, timeout: 20000 }));
  }
  report({ step: 'pages-joined' });

  // Every tab draws the whole tree: the root, the tabs and the extra (Rust) node. Reports
  // climb one level per ~100 ms debounce, so a fresh child first shows up as a `?id`
  // placeholder: wait until every node is drawn under its own name, on every tab.
  const expected = PAGES + 1 + (EXTRA_NODE ? 1 : 0);
  const settled = await waitAll(pages, `every tab to draw the ${expected} nodes by name`, (states) =>
    states.every((s) => s.state === 'connected' && treeSize(s.tree) === expected
      && states.every((other) => treeNames(s.tree).includes(other.name))
      && (!EXTRA_NODE || treeNames(s.tree).includes(EXTRA_NODE)))
    && states.every((s) => JSON.stringify(canonical(s.tree)) === JSON.stringify(canonical(states[0].tree))));
  report({ step: 'joined', pages: settled.map(({ messages, errorText, ...s }) => s) });

  // A tab that is the child of another tab (a browser answered a delegated request)
  // sends; the message goes up through its browser parent to the root and back down.
  const names = new Map(settled.map((s) => [s.id, s.name]));
  const inner = settled.find((s) => s.children.some((id) => names.has(id)));
  if (!inner) fail('no tab is the child of another tab');
  const sender = settled.find((s) => s.name === names.get(inner.children.find((id) => names.has(id))));
  const text = `hello from ${sender.name}, child of ${inner.name}`;
  await sendFrom(pages[settled.indexOf(sender)], text);
  await waitAll(pages, `"${text}" on every tab`, (states) => everyPageShows(states, sender.name, text));
  // One from a tab whose parent is the root, sent with the Enter key.
  const top = settled.find((s) => !settled.some((o) => o.children.includes(s.id)));
  const topPage = pages[settled.indexOf(top)];
  const text2 = `and hello from ${top.name}`;
  await topPage.fill('#text', text2);
  await topPage.press('#text', 'Enter');
  await waitAll(pages, `"${text2}" on every tab`, (states) => everyPageShows(states, top.name, text2));
  if (EXTRA_NODE && EXTRA_TEXT) {
    await waitAll(pages, `"${EXTRA_TEXT}" from ${EXTRA_NODE} on every tab`, (states) =>
      everyPageShows(states, EXTRA_NODE, EXTRA_TEXT));
  }
  report({ step: 'messages', texts: [{ from: sender.name, text }, { from: top.name, text: text2 }] });

  // The failure messages a user meets.
  const failures = {};
  for (const [code, server] of [['Unreachable', process.env.DEAD_URL], ['NoAnswer', process.env.NO_ROOT_URL]]) {
    if (!server) continue;
    const page = await openTab(context, PAGE_URL, { name: `f-${code}`, timeout: 2500, server }, { quiet: true });
    const [s] = await waitAll([page], `the ${code} message`, ([st]) => st.state === 'failed', 15000);
    if (s.error !== code) fail(`expected error ${code}, got ${s.error}: ${s.errorText}`);
    failures[code] = s.errorText.split('\n')[0];
    await page.close();
  }
  report({ step: 'failures', failures });

  if (process.env.SCREENSHOT) {
    // The tab with the most children shows the most.
    const busiest = settled.reduce((best, s) => (s.children.length > best.children.length ? s : best), inner);
    const page = pages[settled.indexOf(busiest)];
    await page.bringToFront();
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    report({ step: 'screenshot', path: process.env.SCREENSHOT, page: busiest.name });
  }
  for (const page of pages) await page.close();
  report({ step: 'done' });
}

run(() => withBrowser(new URL(PAGE_URL).origin, scenario));
