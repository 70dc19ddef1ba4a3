// Browser tabs in a tree of the JS originals (webrtc-tree-overlay 1.0.13 on
// webrtc-bootstrap 4.4.1), run by bin/bootstrap-node/tests/browser.rs inside a
// loopback-only network namespace. The test runs a JS root with max degree 1
// (tests/interop/harness.js); two tabs with max degree 1 join, so the JS root delegates
// the second to the first with a JOIN-REQUEST; then the test starts a JS node, which the
// JS root delegates down to the second tab: a browser answers a simple-peer newcomer.
//
// Environment: PAGE_URL, CHROMIUM, JS_ROOT (the JS root's name), JS_TEXT (what the JS
// root broadcasts). Prints `DRIVE <json>` steps:
//   {"step":"pages-joined","pages":[…]}   (the test then starts the JS node)
//   {"step":"js-child"}                   (the second tab has the JS node as its child;
//                                           the test then makes the JS root broadcast)
//   {"step":"done"}                       (both tabs show the broadcast)

import { fail, joinTab, report, required, run, waitAll, withBrowser, everyPageShows } from './pages.mjs';

const PAGE_URL = required('PAGE_URL');
const JS_ROOT = required('JS_ROOT');
const JS_TEXT = required('JS_TEXT');

async function scenario(context) {
  const first = await joinTab(context, PAGE_URL, { name: 'b1', maxDegree: 1, timeout: 20000 });
  const second = await joinTab(context, PAGE_URL, { name: 'b2', maxDegree: 1, timeout: 20000 });
  const pages = [first, second];
  const [s1, s2] = await waitAll(pages, 'b2 to be the child of b1', ([a, b]) => a.children.includes(b.id));
  if (s2.children.length !== 0) fail(`b2 should have no child yet: ${JSON.stringify(s2)}`);
  report({ step: 'pages-joined', pages: [s1, s2].map(({ messages, errorText, ...s }) => s) });

  await waitAll(pages, 'the JS node to become the child of b2', ([, b]) => b.children.length === 1);
  report({ step: 'js-child' });

  await waitAll(pages, `"${JS_TEXT}" from the JS root on both tabs`, (states) => everyPageShows(states, JS_ROOT, JS_TEXT));
  report({ step: 'done' });
}

run(() => withBrowser(new URL(PAGE_URL).origin, scenario));
