// A relay-only tab, run by bin/bootstrap-node/tests/browser_turn.rs inside a
// loopback-only network namespace, against the real coturn. The test runs the server
// (serving web/, with TURN configured) and a relay-only Rust root
// (`bootstrap-node root --ice-from-server --relay-only`). The tab opens the demo with
// `?relay=1`: it fetches TURN credentials from the server's /ice-servers and relays
// everything through coturn.
//
// Environment: PAGE_URL, CHROMIUM, ROOT_LINE (the line the test types at the root once
// told the tab's message arrived). Prints `DRIVE <json>` steps:
//   {"step":"connected","stats":{…}}   the tab joined; from getStats(): every local
//                                       candidate it gathered is a relay one, and so is
//                                       the selected pair's local candidate; every
//                                       candidate it signaled is a relay one
//   {"step":"messages","from":"relaytab","text":…}
//                                       the tab's message went up to the root and came
//                                       back down (the test checks the root printed it)
//   {"step":"from-root","text":…}      the line typed at the root reached the tab
//   {"step":"done"}

import { WAIT_MS, fail, joinTab, report, required, run, sendFrom, waitAll, withBrowser } from './pages.mjs';

const PAGE_URL = required('PAGE_URL');
const ROOT_LINE = required('ROOT_LINE');
const NAME = 'relaytab';

/** What the tab's parent link shows in `getStats()`, read in the page. */
function linkStats(page) {
  return page.evaluate(async () => {
    const peer = window.demo.node.parent.peer;
    const report = await peer.pc.getStats();
    const stats = [...report.values()];
    const locals = stats
      .filter((s) => s.type === 'local-candidate')
      .map((s) => ({ type: s.candidateType, address: s.address, port: s.port, relayProtocol: s.relayProtocol ?? null, url: s.url ?? null }));
    const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport ? report.get(transport.selectedCandidatePairId) : null;
    const local = pair ? report.get(pair.localCandidateId) : null;
    const remote = pair ? report.get(pair.remoteCandidateId) : null;
    return {
      locals,
      selected: pair && local && remote
        ? { local: local.candidateType, localAddress: `${local.address}:${local.port}`, remote: remote.candidateType, remoteAddress: `${remote.address}:${remote.port}`, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived }
        : null,
      signaled: peer.signaledCandidates,
      path: await peer.path(),
      iceTransportPolicy: peer.pc.getConfiguration().iceTransportPolicy,
      iceServers: peer.pc.getConfiguration().iceServers.map((s) => ({ urls: s.urls, hasCredential: Boolean(s.username && s.credential) })),
      shownPath: document.getElementById('app').dataset.path,
    };
  });
}

async function scenario(context) {
  const page = await joinTab(context, PAGE_URL, { name: NAME, relay: '1', timeout: 20000 });
  await page.waitForFunction(() => document.getElementById('app').dataset.path, null, { timeout: WAIT_MS })
    .catch(() => fail('the tab never showed the path to its parent'));
  const stats = await linkStats(page);
  if (stats.iceTransportPolicy !== 'relay') fail(`the connection is not relay-only: ${JSON.stringify(stats)}`);
  if (!stats.iceServers.some((s) => s.hasCredential)) fail(`no TURN credentials from the server: ${JSON.stringify(stats)}`);
  if (stats.locals.length === 0 || stats.locals.some((c) => c.type !== 'relay')) {
    fail(`the tab gathered candidates that are not relay ones: ${JSON.stringify(stats.locals)}`);
  }
  if (stats.signaled.length === 0 || stats.signaled.some((type) => type !== 'relay')) {
    fail(`the tab signaled candidates that are not relay ones: ${JSON.stringify(stats.signaled)}`);
  }
  if (!stats.selected || stats.selected.local !== 'relay' || stats.selected.remote !== 'relay') {
    fail(`the selected pair is not relay to relay: ${JSON.stringify(stats.selected)}`);
  }
  if (stats.path?.local !== 'relay' || stats.shownPath !== 'relay/relay') {
    fail(`the page shows another path: ${JSON.stringify(stats)}`);
  }
  report({ step: 'connected', stats });

  const text = 'hello through the relay, from the tab';
  await sendFrom(page, text);
  // Up to the root over the relayed channel, and back down in the root's broadcast.
  await waitAll([page], 'the tab\'s message back from the root', ([s]) => s.messages.some((m) => m.from === NAME && m.text === text));
  report({ step: 'messages', from: NAME, text });

  await waitAll([page], 'the root\'s line', ([s]) => s.messages.some((m) => m.text === ROOT_LINE));
  const after = await linkStats(page);
  if (!(after.selected?.bytesReceived > stats.selected.bytesReceived)) {
    fail(`no more bytes arrived on the relayed pair: ${JSON.stringify([stats.selected, after.selected])}`);
  }
  report({ step: 'from-root', text: ROOT_LINE, selected: after.selected });

  await page.close();
  report({ step: 'done' });
}

run(() => withBrowser(new URL(PAGE_URL).origin, scenario));
