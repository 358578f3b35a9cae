// End-to-end check of the web UI in a real headless Chromium (Debian's), driven by
// playwright-core. Run by tests/integration/ui.rs against a real tracegate with real traffic.
//
//   node ui.mjs ADMIN_URL PROXY_URL TRACE_ID SCREENSHOT_DIR [TOKEN]
//
// Checks that the trace list shows every trace the API lists, that a click opens the
// waterfall with one bar per span (and an app span's kind and events in its panel), that the
// usage page shows the API's totals, and that a new call appears without a reload. Then the
// finding features (issue 18): user, session, property and text filters (kept in the URL,
// surviving a reload), "Load more" through next_cursor, the Sessions tab, a session's traces
// in time order with its totals, and a user's page (spend, sessions, errors, traces) — each
// checked against what the API answers for the same question.
// With TOKEN, first logs in through the UI's form.
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
const eventually = async (what, check, detail = () => '') => {
  for (let i = 0; i < 150; i++) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  fail(`timed out waiting for ${what}${await detail()}`);
};
/** Every item of a listing, walked through next_cursor. */
const allPages = async (path, key) => {
  const items = [];
  let cursor = null;
  do {
    const page = await api(path + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''));
    items.push(...page[key]);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
};
const sorted = (list) => [...list].sort().join(',');

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

  // The ids in a table's rows, in order.
  const rowIds = (table, attr = 'data-trace-id') =>
    page.$$eval(`${table} tbody tr[${attr}]`, (rows, a) => rows.map((r) => r.getAttribute(a)), attr);
  /** Waits until `table` lists exactly the API's answer to `path` (all pages); returns the ids. */
  const rowsMatch = async (what, table, path, key = 'traces', attr = 'data-trace-id') => {
    const idOf = key === 'traces' ? (t) => t.trace_id : (s) => s.session;
    const want = (await allPages(path, key)).map(idOf);
    if (want.length === 0) fail(`${what}: the API lists nothing for ${path}, the check would prove nothing`);
    await eventually(what, async () => sorted(await rowIds(table, attr)) === sorted(want),
      async () => `: rows ${JSON.stringify(await rowIds(table, attr))}, API ${JSON.stringify(want)}`);
    return want;
  };
  const hashOf = () => new URL(page.url()).hash;

  // 5. Filters: user, then session, typed into the controls; the URL carries them and a
  //    reload keeps them.
  await page.goto(admin + '/#/traces');
  await page.waitForSelector('#trace-table tbody tr[data-trace-id]');
  await page.fill('[data-filter=user]', 'ada');
  summary.filter_user = (await rowsMatch('the user filter', '#trace-table', '/api/traces?user=ada&limit=1000')).length;
  await eventually('user=ada in the URL', () => hashOf().includes('user=ada'), () => ` (${hashOf()})`);
  await page.fill('[data-filter=session]', 'ada-chat-1');
  summary.filter_user_session = (await rowsMatch('user and session filters', '#trace-table', '/api/traces?user=ada&session=ada-chat-1&limit=1000')).length;
  await page.screenshot({ path: `${shots}/ui-filter-user-session.png` });
  await page.reload();
  await rowsMatch('the filters after a reload', '#trace-table', '/api/traces?user=ada&session=ada-chat-1&limit=1000');
  if ((await page.inputValue('[data-filter=user]')) !== 'ada' || (await page.inputValue('[data-filter=session]')) !== 'ada-chat-1') {
    fail('the filter inputs lost their values on reload');
  }
  // Clear, then a property filter.
  await page.click('[data-action=clear-filters]');
  await eventually('the cleared URL', () => hashOf() === '#/traces', () => ` (${hashOf()})`);
  await page.fill('[data-filter=property]', 'env=staging');
  summary.filter_property = (await rowsMatch('the property filter', '#trace-table', '/api/traces?property.env=staging&limit=1000')).length;
  await page.screenshot({ path: `${shots}/ui-filter-property.png` });
  // Text search in bodies (case-insensitive), reached by a link.
  await page.goto(admin + '/#/traces?q=PURPLE%20elephant');
  summary.filter_text = (await rowsMatch('the text search', '#trace-table', '/api/traces?q=PURPLE%20elephant&limit=1000')).length;
  if ((await page.inputValue('[data-filter=q]')) !== 'PURPLE elephant') fail('the search box does not show the linked q');
  await page.screenshot({ path: `${shots}/ui-filter-text.png` });
  // Status from the select, combined with the user.
  await page.goto(admin + '/#/traces?user=ada');
  await page.selectOption('[data-filter=status]', 'error');
  summary.filter_user_errors = (await rowsMatch('user and status', '#trace-table', '/api/traces?user=ada&status=error&limit=1000')).length;
  // A custom time range starting in the future matches nothing; "Last 1 h" matches them again.
  await page.selectOption('[data-filter=since]', 'custom');
  await page.fill('[data-filter=from]', '2500-01-01T00:00');
  await eventually('the empty result of a future range', async () => (await rowIds('#trace-table')).length === 0 && page.isVisible('text=No traces match these filters.'));
  if (!hashOf().includes('since=custom') || !hashOf().includes('from=2500-01-01T00%3A00')) fail(`the custom range is not in the URL: ${hashOf()}`);
  await page.selectOption('[data-filter=since]', '1h');
  await rowsMatch('the last hour', '#trace-table', `/api/traces?user=ada&status=error&from=${Date.now() - 3_600_000}&limit=1000`);

  // 6. Load more: pages of 3 through next_cursor, appended in the API's order, no duplicate,
  //    the button gone after the last page.
  const every = (await allPages('/api/traces?limit=3', 'traces')).map((t) => t.trace_id);
  await page.goto(admin + '/#/traces?limit=3');
  await eventually('the first page of 3', async () => (await rowIds('#trace-table')).length === 3);
  let clicks = 0;
  while (await page.isVisible('#main button.load-more')) {
    const before = (await rowIds('#trace-table')).length;
    await page.click('#main button.load-more');
    clicks++;
    await eventually('the next page', async () => (await rowIds('#trace-table')).length > before || !(await page.isVisible('#main button.load-more')));
    if (clicks === 1) await page.screenshot({ path: `${shots}/ui-load-more.png`, fullPage: true });
    if (clicks > 50) fail('load more never ends');
  }
  const shown = await rowIds('#trace-table');
  if (shown.join(',') !== every.join(',')) fail(`load more shows ${JSON.stringify(shown)}, the API's pages ${JSON.stringify(every)}`);
  summary.load_more = { pages: clicks + 1, rows: shown.length };

  // 7. The Sessions tab, filtered by user; a session's traces oldest first, and its totals.
  await page.goto(admin + '/#/traces');
  await page.click('.tab[data-tab=sessions]');
  summary.sessions = (await rowsMatch('the sessions', '#session-table', '/api/sessions?limit=1000', 'sessions', 'data-session')).length;
  await page.screenshot({ path: `${shots}/ui-sessions.png` });
  await page.fill('[data-filter=user]', 'grace');
  await rowsMatch('sessions of grace', '#session-table', '/api/sessions?user=grace&limit=1000', 'sessions', 'data-session');
  await page.screenshot({ path: `${shots}/ui-sessions-filtered.png` });
  await page.click('[data-action=clear-filters]');
  await page.waitForSelector('#session-table tr[data-session="ada-chat-1"]');
  // Keyboard: focus the row, Enter opens the session.
  await page.focus('#session-table tr[data-session="ada-chat-1"]');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#session-traces tbody tr[data-trace-id]');
  const inOrder = (await allPages('/api/traces?session=ada-chat-1&limit=1000', 'traces'))
    .sort((a, b) => a.start_time_unix_nano - b.start_time_unix_nano).map((t) => t.trace_id);
  await eventually('the session\'s traces oldest first', async () => (await rowIds('#session-traces')).join(',') === inOrder.join(','),
    async () => `: rows ${JSON.stringify(await rowIds('#session-traces'))}, API by start ${JSON.stringify(inOrder)}`);
  const sessionTotals = (await api('/api/sessions?session=ada-chat-1')).sessions.find((s) => s.session === 'ada-chat-1');
  const stat = async (key) => (await page.locator(`#session-totals [data-stat=${key}] .stat-value`).innerText()).trim();
  for (const [key, want] of [['traces', sessionTotals.trace_count], ['spans', sessionTotals.span_count], ['errors', sessionTotals.errors]]) {
    const got = await eventually(`the session's ${key}`, async () => Number((await stat(key)).replace(/,/g, '')) === want ? String(want) : '');
    summary[`session_${key}`] = Number(got);
  }
  if (!(await stat('tokens')).includes(sessionTotals.input_tokens.toLocaleString('en-US'))) fail(`the session's tokens show ${await stat('tokens')}`);
  summary.session_traces = inOrder.length;
  await page.screenshot({ path: `${shots}/ui-session.png` });

  // 8. A user's page, reached from the session's user link: spend, sessions, errors, traces.
  await page.click('#main a[data-user=ada]');
  await page.waitForSelector('#user-name');
  if (hashOf() !== '#/users/ada') fail(`the user link led to ${hashOf()}`);
  const usage = (await api('/api/usage?group_by=user')).rows.find((r) => r.user === 'ada');
  await eventually('the user\'s spend', async () => Number(await page.getAttribute('#user-spend [data-total=requests]', 'data-value').catch(() => -1)) === usage.requests);
  const shownCost = Number(await page.getAttribute('#user-spend [data-total=cost_usd]', 'data-value'));
  if (Math.abs(shownCost - usage.cost_usd) > 1e-9) fail(`ada's cost shows ${shownCost}, the API ${usage.cost_usd}`);
  summary.user_requests = usage.requests;
  summary.user_sessions = (await rowsMatch('the user\'s sessions', '#user-sessions', '/api/sessions?user=ada&limit=1000', 'sessions', 'data-session')).length;
  summary.user_errors = (await rowsMatch('the user\'s errors', '#user-errors', '/api/traces?user=ada&status=error&limit=1000')).length;
  summary.user_traces = (await rowsMatch('the user\'s traces', '#user-traces', '/api/traces?user=ada&limit=1000')).length;
  await page.waitForSelector('#user-models tbody tr[data-group]');
  await page.screenshot({ path: `${shots}/ui-user.png`, fullPage: true });
  // A user link inside a trace row opens the user, not the trace; a session name with "/" and
  // a space survives the URL.
  await page.goto(admin + '/#/traces');
  await page.click('#trace-table a[data-user=grace] >> nth=0');
  await page.waitForSelector('#user-name');
  if (hashOf() !== '#/users/grace') fail(`the row's user link led to ${hashOf()}`);
  await page.click('#user-sessions tr[data-session] >> nth=0');
  await page.waitForSelector('#session-name');
  const graceSession = await page.locator('#session-name').innerText();
  if (graceSession !== 'grace/week 1') fail(`grace's session page names ${JSON.stringify(graceSession)}`);
  summary.user_link = true;

  if (errors.length) fail(`page errors: ${errors.join('; ')}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
