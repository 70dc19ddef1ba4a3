// Shared by the browser drivers (drive.mjs, interop.mjs, overlays.mjs): launching Debian's Chromium with
// the flags that work in a loopback-only network namespace, opening demo tabs, reading
// their state from the page's data attributes, and waiting with timeouts.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Longest wait for one condition. */
export const WAIT_MS = 30000;
const DEBUG = Boolean(process.env.DEBUG_PAGES);

/** Launch flags (web/README.md says why each is there). */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Chromium never gathers candidates on the loopback interface without this; in a
  // loopback-only network namespace it is the only interface.
  '--allow-loopback-in-peer-connection',
];

/** The value of a required environment variable. */
export function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${process.argv[1]}: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

/** One step for the Rust test: a `DRIVE <json>` line. */
export function report(step) {
  console.log(`DRIVE ${JSON.stringify(step)}`);
}

export function fail(message) {
  throw new Error(message);
}

/**
 * Launches Chromium with a fresh profile, runs `body(context)`, and always cleans up.
 * `origin` gets the media permission: with it Chromium lists the host's interfaces for
 * WebRTC (raw IPs, no mDNS names); without it, it only binds a wildcard socket and
 * signals no host candidate at all, so two browsers could never reach each other (a Rust
 * peer still can: Chromium's checks reach its 127.0.0.1 candidate, peer-reflexive).
 */
export async function withBrowser(origin, body) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'bootstrap-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1180, height: 560 },
    timeout: WAIT_MS,
  });
  try {
    await context.grantPermissions(['camera', 'microphone'], { origin });
    return await body(context);
  } finally {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

/** Opens the demo in a new tab with these query options (`name` among them). Its console
 * errors are echoed unless `quiet` (for tabs expected to fail). */
export async function openTab(context, pageUrl, query, { quiet = false } = {}) {
  const page = await context.newPage();
  const name = query.name;
  page.on('console', (message) => {
    if (DEBUG || (!quiet && (message.type() === 'error' || message.type() === 'warning'))) {
      console.error(`[${name} console] ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => console.error(`[${name} pageerror] ${error.message}`));
  const params = new URLSearchParams(query);
  if (DEBUG) params.set('debug', '');
  await page.goto(`${pageUrl}?${params}`, { timeout: WAIT_MS });
  return page;
}

/** Opens a tab and waits until it joined; fails with the page's error message if not. */
export async function joinTab(context, pageUrl, query) {
  const page = await openTab(context, pageUrl, query);
  const [state] = await waitAll([page], `${query.name} to join`, ([s]) => s.state === 'connected' || s.state === 'failed');
  if (state.state !== 'connected') fail(`${query.name} failed to join: ${state.error}: ${state.errorText}`);
  return page;
}

/** What the demo page shows, from its stable data attributes. */
export async function pageState(page) {
  return page.evaluate(() => {
    const app = document.getElementById('app');
    const error = document.getElementById('error');
    return {
      name: app.dataset.name,
      overlay: app.dataset.overlay,
      /** The overlay's name as the header shows it to the user. */
      overlayShown: document.getElementById('me-overlay').textContent,
      state: app.dataset.state,
      id: app.dataset.id,
      parent: app.dataset.parent,
      parentName: app.dataset.parentName,
      children: JSON.parse(app.dataset.children || '[]'),
      tree: JSON.parse(document.getElementById('tree').dataset.tree || 'null'),
      error: error.hidden ? null : error.dataset.code,
      refusal: error.hidden ? null : error.dataset.refusal || null,
      errorTitle: error.hidden ? null : document.getElementById('error-title').textContent,
      errorText: error.hidden ? null : error.innerText,
      messages: [...document.querySelectorAll('#log li.msg')].map((li) => ({ from: li.dataset.from, text: li.dataset.text })),
    };
  });
}

/** Polls `check(states)` over `pages` until it returns true; fails after `timeoutMs`. */
export async function waitAll(pages, what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let states = [];
  while (Date.now() < deadline) {
    states = await Promise.all(pages.map(pageState));
    if (check(states)) return states;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  fail(`timed out after ${timeoutMs} ms waiting for ${what}; pages: ${JSON.stringify(states.map(({ messages, ...s }) => s))}`);
}

/** Whether every page shows the message `text` from `from`. */
export function everyPageShows(states, from, text) {
  return states.every((s) => s.messages.some((m) => m.from === from && m.text === text));
}

/** Types `text` into a tab's message box and sends it. */
export async function sendFrom(page, text) {
  await page.fill('#text', text);
  await page.click('#send-button');
}

/** Runs `main` with a watchdog; exits 0 on success, 1 with the reason otherwise. */
export function run(main, watchdogMs = 100000) {
  const watchdog = setTimeout(() => {
    console.error(`${process.argv[1]}: gave up after ${watchdogMs} ms`);
    process.exit(3);
  }, watchdogMs);
  watchdog.unref();
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(`${process.argv[1]}: ${error.stack || error}`);
      process.exit(1);
    },
  );
}
