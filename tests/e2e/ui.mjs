// End-to-end check of the web UI in a real headless Chromium (Debian's), driven by
// playwright-core. Run by tests/integration/ui.rs against a real tracegate with real traffic.
//
//   node ui.mjs ADMIN_URL PROXY_URL TRACE_ID SCREENSHOT_DIR [TOKEN]
//
// Checks that the trace list shows every trace the API lists, that a click opens the
// waterfall with one bar per span (and an app span's kind and events in its panel), that the
// usage page shows the API's totals, and that a new call appears without a reload. With TOKEN, first logs in through the UI's form.
// Exits non-zero with a message on the first failed check; prints a JSON summary on success.

import { chromium } from 'playwright-core';

const [admin, proxy, traceId, shots, token] = process.argv.slice(2);
const fail = (message) => { console.error(`ui.mjs: ${message}`); process.exit(1); };
const api = async (path) => {
  const r = await fetch(admin + path, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (!r.ok) fail(`${path} answered ${r.status}`);
  return r.json();
};
/** Polls `check` (up to 15 s: the UI refreshes every 2 s) until it returns a truthy value. */
const eventually = async (what, check) => {
  for (let i = 0; i < 150; i++) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  fail(`timed out waiting for ${what}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
const summary = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  await page.goto(admin + '/#/traces');
  if (token) {
    await page.waitForSelector('form.login');
    await page.fill('form.login input[type=password]', token);
    await page.click('form.login button[type=submit]');
  }

  // 1. The list shows every trace the API has.
  const listed = (await api('/api/traces?limit=100')).traces;
  summary.traces = await eventually('the trace rows', async () => {
    const n = await page.locator('#trace-table tr[data-trace-id]').count();
    return n === listed.length ? n : 0;
  });
  await page.screenshot({ path: `${shots}/ui-traces.png` });

  // 2. Live: a new call appears without a reload.
  const r = await fetch(proxy + '/openai/v1/chat/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'live?' }] }),
  });
  const liveTrace = r.headers.get('x-tracegate-trace-id');
  await r.text();
  await eventually('the new trace to appear live', () => page.locator(`#trace-table tr[data-trace-id="${liveTrace}"]`).count());
  summary.live = true;

  // 3. A click opens the waterfall: one bar per span, a TTFT mark on the stream.
  const spans = (await api(`/api/traces/${traceId}`)).spans;
  await page.click(`#trace-table tr[data-trace-id="${traceId}"]`);
  summary.bars = await eventually('the waterfall bars', async () => {
    const n = await page.locator('.span-bar').count();
    return n === spans.length ? n : 0;
  });
  if (spans.some((s) => s.ttft_ms !== null) && (await page.locator('.ttft-mark').count()) === 0) fail('no TTFT mark on a stream');
  const stream = spans.find((s) => s.stream && s.kind === 'llm');
  await page.click(`.span-bar[data-span-id="${stream.span_id}"]`);
  await page.waitForSelector('#span-panel .assembled');
  const assembled = await page.locator('#span-panel .assembled').innerText();
  if (!assembled.includes('mock reply')) fail(`assembled stream text is ${JSON.stringify(assembled)}`);
  await page.screenshot({ path: `${shots}/ui-trace.png` });
  // The app span's panel shows its OpenTelemetry kind and its events.
  const app = spans.find((s) => s.kind === 'app');
  if (app) {
    await page.click(`.span-bar[data-span-id="${app.span_id}"]`);
    await page.waitForSelector('#span-panel .span-event');
    const panel = await page.locator('#span-panel').innerText();
    if (app.span_kind && !panel.includes(app.span_kind)) fail(`the app span's panel lacks its kind ${app.span_kind}`);
    for (const e of app.events) if (!panel.includes(e.name)) fail(`the app span's panel lacks the event ${e.name}`);
    summary.app_span_events = await page.locator('#span-panel .span-event').count();
  }

  // 4. The usage page shows the same totals as /api/usage for the same days.
  await page.goto(admin + '/#/usage');
  await page.waitForSelector('[data-total="requests"]');
  const from = await page.inputValue('input[type=date] >> nth=0');
  const to = await page.inputValue('input[type=date] >> nth=1');
  const totals = (await api(`/api/usage?from=${from}&to=${to}&group_by=team`)).totals;
  for (const key of ['requests', 'input_tokens', 'output_tokens', 'cost_usd']) {
    const shown = await eventually(`the ${key} total`, async () => {
      const v = Number(await page.getAttribute(`[data-total="${key}"]`, 'data-value'));
      return Math.abs(v - totals[key]) < 1e-9 ? String(v) : '';
    });
    summary[key] = Number(shown);
  }
  await page.waitForSelector('#usage-table');
  await page.screenshot({ path: `${shots}/ui-usage.png` });
  if (errors.length) fail(`page errors: ${errors.join('; ')}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
