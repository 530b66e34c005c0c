// Real-browser test of the demo page: headless Debian Chromium, driven by playwright-core,
// against a gate someone else started (gate/tests/browser.rs). Two browser contexts are users
// 1001 (A) and 1002 (B): they chat both ways, unread badges rise and clear, read receipts show,
// B creates a group that A joins, and a native TCP client (imgate-chat, user 1003) writes to A.
// Ends with a screenshot of both pages side by side.
//
// Environment:
//   IMGATE_ADDR        the gate's client address, host:port (required)
//   IMGATE_CHAT_BIN    the imgate-chat binary (required)
//   IMGATE_SCREENSHOT  where to write the PNG (default: demo.png here)
//   IMGATE_CHROMIUM    the browser (default /usr/bin/chromium)
// Exits 0 when every step passed, 1 on the first failure (naming the step), 2 on the overall
// deadline. Every wait is bounded.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 10_000;
const OVERALL_TIMEOUT_MS = 120_000;
const A = '1001';
const B = '1002';
const NATIVE = '1003';

const addr = process.env.IMGATE_ADDR;
const chatBin = process.env.IMGATE_CHAT_BIN;
const screenshot = process.env.IMGATE_SCREENSHOT ?? fileURLToPath(new URL('demo.png', import.meta.url));
const executablePath = process.env.IMGATE_CHROMIUM ?? '/usr/bin/chromium';
if (!addr || !chatBin) {
  console.error('IMGATE_ADDR and IMGATE_CHAT_BIN must be set (gate/tests/browser.rs sets them)');
  process.exit(1);
}

const overall = setTimeout(() => {
  console.error(`FAIL: the whole test took longer than ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(2);
}, OVERALL_TIMEOUT_MS);

let current = 'start';
function step(what) {
  current = what;
  console.log(`step: ${what}`);
}

const problems = [];

async function newUser(browser, name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 }, deviceScaleFactor: 1 });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${name}: console error: ${m.text()}`);
  });
  await page.goto(`http://${addr}/`, { waitUntil: 'load' });
  return page;
}

async function login(page, uid) {
  await page.fill('#uid', uid);
  await page.click('#login');
  await page.locator('#status.online').waitFor();
  await page.locator('#chat-view').waitFor();
}

/** Waits until the conversation's unread badge reads `n` (0: no badge). */
async function badge(page, conv, n) {
  const loc = page.locator(`[data-conv="${conv}"] .badge`);
  if (n === 0) {
    await page.locator(`[data-conv="${conv}"]`).waitFor();
    await loc.waitFor({ state: 'detached' });
  } else {
    await page.locator(`[data-conv="${conv}"] .badge`, { hasText: new RegExp(`^${n}$`) }).waitFor();
    // Really on screen: inside its row, not pushed out by a long preview.
    const [item, dot] = await Promise.all([page.locator(`[data-conv="${conv}"]`).boundingBox(), loc.boundingBox()]);
    if (!item || !dot || dot.x < item.x || dot.x + dot.width > item.x + item.width) {
      throw new Error(`the badge of ${conv} is outside its row: ${JSON.stringify({ item, dot })}`);
    }
  }
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.click('#send');
  // Sent: the gate's SendResp gave it a msg_id.
  await page.locator('.msg.mine[data-msg-id] .bubble', { hasText: text }).waitFor();
}

async function sees(page, text) {
  await page.locator('.msg:not(.mine) .bubble', { hasText: text }).waitFor();
}

async function readReceiptOn(page, text) {
  await page.locator('.msg.mine', { hasText: text }).locator('.receipt.read').waitFor();
}

/** imgate-chat as user 1003 over TCP: log in, send `text` to `to`, quit; bounded. */
function nativeSend(to, text) {
  return new Promise((resolve, reject) => {
    const child = spawn(chatBin, ['--addr', addr, '--uid', NATIVE, '--device', 'terminal'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const seen = [];
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`imgate-chat did not finish within ${STEP_TIMEOUT_MS} ms; printed ${JSON.stringify(seen)}`));
    }, STEP_TIMEOUT_MS);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    createInterface({ input: child.stdout }).on('line', (line) => {
      seen.push(line);
      if (line.startsWith('SYNC total_unread=')) child.stdin.write(`/to ${to}\n${text}\n`);
      else if (line.startsWith('SENT ')) child.stdin.write('/quit\n');
      else if (/^(ERROR|TIMEOUT|BAD) /.test(line)) child.stdin.write('/quit\n');
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0 && seen.some((l) => l.startsWith('SENT '))) resolve(seen);
      else reject(new Error(`imgate-chat exited ${code}; printed ${JSON.stringify(seen)}`));
    });
  });
}

/** Both pages side by side, captioned, as one PNG. */
async function sideBySide(browser, left, right, path) {
  const [a, b] = await Promise.all([left.screenshot(), right.screenshot()]);
  const context = await browser.newContext({ viewport: { width: 1840, height: 660 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const img = (buf) => `data:image/png;base64,${buf.toString('base64')}`;
  await page.setContent(`<!doctype html><html><body style="margin:0;background:#d8dce3;font:600 14px system-ui,sans-serif">
    <div style="display:flex;gap:20px;padding:14px 14px 16px">
      <figure style="margin:0"><figcaption style="margin:0 0 6px">Browser 1 — user ${A}</figcaption>
        <img src="${img(a)}" style="display:block;border:1px solid #9aa1ad;border-radius:6px"></figure>
      <figure style="margin:0"><figcaption style="margin:0 0 6px">Browser 2 — user ${B}</figcaption>
        <img src="${img(b)}" style="display:block;border:1px solid #9aa1ad;border-radius:6px"></figure>
    </div></body></html>`);
  await page.screenshot({ path, fullPage: true });
  await context.close();
}

async function main() {
  step(`launch ${executablePath}`);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: STEP_TIMEOUT_MS * 3,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    step('open the page twice (two contexts: separate storage, separate sockets)');
    const a = await newUser(browser, 'A');
    const b = await newUser(browser, 'B');
    if ((await a.title()) !== 'imgate demo') throw new Error(`page title ${await a.title()}`);

    step('log in A and B');
    await login(a, A);
    await login(b, B);

    step('A → B: A opens the chat and sends');
    await a.fill('#peer-uid', B);
    await a.click('#open-chat');
    await send(a, 'Hi B! This is A, in a browser, over WebSocket.');

    step('B sees an unread badge of 1 for A, then opens the chat');
    await badge(b, `1:${A}`, 1);
    await b.locator('#total-unread', { hasText: '1 unread' }).waitFor();
    await b.click(`[data-conv="1:${A}"]`);
    await sees(b, 'Hi B! This is A');
    await badge(b, `1:${A}`, 0);

    step('A gets the read receipt');
    await readReceiptOn(a, 'Hi B! This is A');

    step('B → A: A has the chat open, reads it at once; B gets the receipt');
    await send(b, 'Hello A, B here. Read receipts work both ways.');
    await sees(a, 'Hello A, B here');
    await readReceiptOn(b, 'Hello A, B here');

    step('B creates a group, A joins it by id');
    await b.fill('#group-name', 'launch');
    await b.click('#create-group');
    const groupItem = b.locator('[data-conv^="2:"]');
    await groupItem.waitFor();
    const group = await groupItem.getAttribute('data-conv');
    const gid = group.slice(2);
    await a.fill('#group-id', gid);
    await a.click('#join-group');
    await a.locator(`[data-conv="${group}"].active`).waitFor();
    await a.locator('#conv-info', { hasText: `members: ` }).waitFor();
    step('A goes back to B; B writes to the group: A has an unread group message');
    await a.click(`[data-conv="1:${B}"]`);
    await a.locator(`[data-conv="1:${B}"].active`).waitFor();
    await send(b, 'Launch checklist is ready, have a look.');
    await badge(a, group, 1);

    step('a native TCP client (imgate-chat, user 1003) writes to A');
    await nativeSend(A, 'Hi A, from a terminal: imgate-chat over plain TCP.');
    await badge(a, `1:${NATIVE}`, 1);
    await a.locator(`[data-conv="1:${NATIVE}"] .preview`, { hasText: 'from a terminal' }).waitFor();
    await a.locator('#total-unread', { hasText: '2 unread' }).waitFor();

    step('B goes back to its chat with A (for the picture)');
    await b.click(`[data-conv="1:${A}"]`);
    await b.locator(`[data-conv="1:${A}"].active`).waitFor();
    await readReceiptOn(b, 'Hello A, B here');

    step(`screenshot → ${screenshot}`);
    // The transient notices ("Group N created") would only clutter the picture.
    for (const page of [a, b]) await page.evaluate(() => document.getElementById('log').replaceChildren());
    await sideBySide(browser, a, b, screenshot);

    if (problems.length > 0) throw new Error(`the pages reported:\n  ${problems.join('\n  ')}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => {
    clearTimeout(overall);
    console.log('browser test ok');
    process.exit(0);
  },
  (e) => {
    console.error(`FAIL at step "${current}": ${e.stack ?? e}`);
    if (problems.length > 0) console.error(problems.join('\n'));
    process.exit(1);
  },
);
