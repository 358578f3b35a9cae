// The span panel's assembled text for a streamed response of every wire format, in a real
// headless Chromium (Debian's) driven by playwright-core. Run by tests/integration/ui.rs.
//
//   node streams.mjs ADMIN_URL TRACE_ID
//
// Opens the trace, clicks each streamed span's bar and reads the assembled text and the raw
// toggle's label. Prints [{"path": ..., "text": ..., "toggle": ...}, ...]; exits non-zero with
// a message when a panel shows no assembled text.

import { chromium } from 'playwright-core';

const [admin, traceId] = process.argv.slice(2);
const fail = (message) => { console.error(`streams.mjs: ${message}`); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const summary = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const spans = (await (await fetch(`${admin}/api/traces/${traceId}`)).json()).spans.filter((s) => s.stream);
  if (spans.length === 0) fail('the trace has no streamed spans');
  await page.goto(`${admin}/#/traces/${traceId}`);
  await page.waitForSelector('.span-bar');
  for (const span of spans) {
    await page.click(`.span-bar[data-span-id="${span.span_id}"]`);
    const panel = `#span-panel[data-span-id="${span.span_id}"] .assembled`;
    try {
      await page.waitForSelector(panel, { timeout: 10000 });
    } catch {
      fail(`no assembled text for ${span.path}: ${await page.locator('#span-panel').innerText()}`);
    }
    summary.push({
      path: span.path,
      text: await page.locator(panel).innerText(),
      toggle: await page.locator('#span-panel .raw-toggle').innerText(),
    });
  }
  if (errors.length) fail(`page errors: ${errors.join('; ')}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
