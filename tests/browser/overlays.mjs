// Tabs in named overlays on a server that requires join tokens, run by
// bin/bootstrap-node/tests/browser_overlays.rs inside a loopback-only network namespace.
// The test runs two Rust roots: one of overlay `chat` (max degree 2) and one of the
// default overlay. Two tabs open the room link `?overlay=chat&token=…` and one tab the
// plain page `?token=…`; each token travels in the `bearer` subprotocol, so their joins
// also check that Chromium accepts the server's answer. Then tabs that must fail: a token
// of another overlay, no token, an overlay that does not exist, an invalid overlay name.
// One Chromium for everything.
//
// Environment: PAGE_URL, CHROMIUM, CHAT_TOKEN and DEFAULT_TOKEN (join tokens of `chat`
// and of the default overlay). Prints `DRIVE <json>` steps:
//   {"step":"joined","pages":[…]}      every tab connected in its own overlay, and draws
//                                       only its own overlay's tree
//   {"step":"messages","texts":[{from,text,overlay}]}
//                                       a message from a chat tab reached both chat tabs
//                                       and one from the default tab reached it, and
//                                       neither crossed (the test then checks the roots)
//   {"step":"failures","failures":{name:{code,refusal,title}}}
//   {"step":"done"}

import { everyPageShows, fail, openTab, report, required, run, sendFrom, waitAll, withBrowser } from './pages.mjs';

const PAGE_URL = required('PAGE_URL');
const CHAT_TOKEN = required('CHAT_TOKEN');
const DEFAULT_TOKEN = required('DEFAULT_TOKEN');

function treeNames(tree) {
  return tree ? [tree.name, ...tree.children.flatMap(treeNames)] : [];
}

const sameSet = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

/** Every tab that must fail, with the query it opens and what it must say. */
const FAILURES = [
  // A valid token, but for the default overlay: the server answers 401.
  { query: { name: 'f-wrong-token', overlay: 'chat', token: DEFAULT_TOKEN }, code: 'JoinRefused', refusal: 'Unauthorized', title: 'The join token was refused' },
  { query: { name: 'f-no-token', overlay: 'chat' }, code: 'JoinRefused', refusal: 'Unauthorized', title: 'This overlay needs a join token' },
  { query: { name: 'f-no-overlay', overlay: 'nope', token: CHAT_TOKEN }, code: 'JoinRefused', refusal: 'NoSuchOverlay', title: 'No such overlay' },
  { query: { name: 'f-bad-name', overlay: '..', token: CHAT_TOKEN }, code: 'InvalidOverlay', refusal: null, title: 'Invalid overlay name' },
];

async function scenario(context) {
  // The three tabs join at once: the chat root has room for both chat tabs.
  const queries = [
    { name: 'c1', overlay: 'chat', token: CHAT_TOKEN, maxDegree: 2, timeout: 20000 },
    { name: 'c2', overlay: 'chat', token: CHAT_TOKEN, maxDegree: 2, timeout: 20000 },
    { name: 'd1', token: DEFAULT_TOKEN, maxDegree: 2, timeout: 20000 },
  ];
  const pages = await Promise.all(queries.map((query) => openTab(context, PAGE_URL, query)));
  const [c1, c2, d1] = pages;
  const joined = await waitAll(pages, 'every tab to join and draw its own overlay\'s tree', (states) => {
    if (states.some((s) => s.state === 'failed')) fail(`a tab failed to join: ${JSON.stringify(states)}`);
    const [s1, s2, s3] = states;
    return states.every((s) => s.state === 'connected')
      && sameSet(treeNames(s1.tree), ['chatroot', 'c1', 'c2'])
      && sameSet(treeNames(s2.tree), ['chatroot', 'c1', 'c2'])
      && sameSet(treeNames(s3.tree), ['defroot', 'd1']);
  });
  for (const [s, overlay] of [[joined[0], 'chat'], [joined[1], 'chat'], [joined[2], 'default']]) {
    if (s.overlay !== overlay || s.overlayShown !== overlay) {
      fail(`${s.name} should show overlay ${overlay}: ${JSON.stringify(s)}`);
    }
  }
  report({ step: 'joined', pages: joined.map(({ messages, errorText, ...s }) => s) });

  const chatText = 'hello chat, from c1';
  const defaultText = 'hello default, from d1';
  await sendFrom(c1, chatText);
  await sendFrom(d1, defaultText);
  await waitAll([c1, c2], `"${chatText}" on both chat tabs`, (states) => everyPageShows(states, 'c1', chatText));
  await waitAll([d1], `"${defaultText}" on the default tab`, (states) => everyPageShows(states, 'd1', defaultText));
  // Both broadcasts are through: a leak would have arrived by now.
  const [s1, s2, s3] = await waitAll(pages, 'the logs', () => true);
  const leaked = [
    ...[s1, s2].filter((s) => s.messages.some((m) => m.from === 'd1')).map((s) => `${s.name} got d1's message`),
    ...(s3.messages.some((m) => m.from === 'c1') ? ['d1 got c1\'s message'] : []),
  ];
  if (leaked.length > 0) fail(`a message crossed overlays: ${leaked.join(', ')}`);
  report({
    step: 'messages',
    texts: [{ from: 'c1', text: chatText, overlay: 'chat' }, { from: 'd1', text: defaultText, overlay: 'default' }],
  });

  const failing = await Promise.all(FAILURES.map(({ query }) =>
    openTab(context, PAGE_URL, { ...query, timeout: 5000 }, { quiet: true })));
  const states = await waitAll(failing, 'every failing tab to explain itself', (all) => all.every((s) => s.state === 'failed'), 15000);
  const failures = {};
  FAILURES.forEach(({ query, code, refusal, title }, i) => {
    const s = states[i];
    if (s.error !== code || s.refusal !== refusal || s.errorTitle !== title) {
      fail(`${query.name}: expected ${code}/${refusal} "${title}", got ${s.error}/${s.refusal} "${s.errorTitle}": ${s.errorText}`);
    }
    failures[query.name] = { code: s.error, refusal: s.refusal, title: s.errorTitle, text: s.errorText };
  });
  report({ step: 'failures', failures });

  for (const page of [...pages, ...failing]) await page.close();
  report({ step: 'done' });
}

run(() => withBrowser(new URL(PAGE_URL).origin, scenario));
