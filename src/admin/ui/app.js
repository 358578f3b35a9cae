// tracegate web UI: a hash-routed single-page app over the admin JSON API.
// Pages: #/traces (live trace list: filters in the URL, "load more" by cursor), #/traces/<id>
// (waterfall + span panel), #/sessions (live session list), #/sessions/<name> (a session's
// traces in time order, its totals), #/users/<name> (a user's spend, sessions, errors, traces),
// #/usage (dashboard).
// Plain ES module, no dependencies, works offline. Every piece of API data reaches the DOM
// through textContent / setAttribute only (never innerHTML): spans and bodies are untrusted.
//
// Development aid: `?api=http://127.0.0.1:9388` in the page URL (or window.TRACEGATE_API_BASE)
// points the UI at an admin API on another origin; the browser must then allow cross-origin
// requests (e.g. Chromium with --disable-web-security). In production the API is same-origin.

const API_BASE = (
  new URLSearchParams(location.search).get("api") ?? window.TRACEGATE_API_BASE ?? ""
).replace(/\/+$/, "");
const POLL_MS = 2000;
const MAX_RICH_JSON_CHARS = 300_000;
const SVG_NS = "http://www.w3.org/2000/svg";

/* ------------------------------------------------------------------ DOM helpers */

/** Appendable children: strings become text nodes, null/false are skipped. */
function childNodes(children) {
  return children
    .flat(Infinity)
    .filter((c) => c != null && c !== false)
    .map((c) => (c instanceof Node ? c : String(c)));
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      Object.assign(node.style, value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

/** Creates an HTML element: el("td", {class: "num"}, "text", otherNode). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...childNodes(children));
  return node;
}

/** Creates an SVG element, same calling convention as el(). */
function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...childNodes(children));
  return node;
}

/** Replaces a node's children; accepts the same child forms as el(). */
function fill(node, ...children) {
  node.replaceChildren(...childNodes(children));
  return node;
}

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/* ------------------------------------------------------------------ formatting */

const intFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const compactFormat = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const DASH = "—";

function fmtInt(n) {
  return n == null ? DASH : intFormat.format(n);
}

function fmtCost(usd) {
  return usd == null ? DASH : `$${Number(usd).toFixed(6)}`;
}

/** A cost, or "unpriced" where tokens are known but no price applies to the model. */
function fmtCostOrUnpriced(usd, tokensKnown) {
  if (usd != null || !tokensKnown) return fmtCost(usd);
  return el("span", { class: "muted unpriced", title: "no price for this model: add [pricing.\"model\"] to the config (tracegate prices MODEL)" }, "unpriced");
}

function fmtDuration(ms) {
  if (ms == null || !Number.isFinite(ms)) return DASH;
  if (ms === 0) return "0";
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes}m ${Math.round((ms % 60_000) / 1000)}s`;
}

function nsToDate(ns) {
  return new Date(Number(ns) / 1e6);
}

/** Local time: "14:03:21" today, "Nov 23, 14:03:21" otherwise. */
function fmtTime(ns) {
  const date = nsToDate(ns);
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${time}`;
}

/** Local "2026-11-24 14:03:21.883" for the span panel. */
function fmtDateTimeMs(ns) {
  const d = nsToDate(ns);
  const two = (n) => String(n).padStart(2, "0");
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
  return `${date} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

/** Axis label: a duration without trailing zeros ("50 ms", "2.5 s"). */
function fmtTick(ms) {
  return fmtDuration(ms).replace(/\.0+(?=\s)/, "").replace(/(\.\d*?[1-9])0+(?=\s)/, "$1");
}

function fmtTokens(input, output) {
  if (input == null && output == null) return DASH;
  return `${fmtInt(input ?? 0)} / ${fmtInt(output ?? 0)}`;
}

function shortId(id) {
  return String(id ?? "").slice(0, 8);
}

/** Step of about `target` ticks over `range`, snapped to 1/2/2.5/5 × 10^n. */
function niceStep(range, target) {
  const raw = range / Math.max(1, target);
  if (!(raw > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  const snapped = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return snapped * magnitude;
}

/* ------------------------------------------------------------------ API access */

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  let response;
  try {
    response = await fetch(API_BASE + path, { credentials: "same-origin", headers: { accept: "application/json" } });
  } catch {
    throw new ApiError(0, "Cannot reach the tracegate admin API.");
  }
  if (response.status === 401) {
    showLogin();
    throw new ApiError(401, "Login required.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Non-JSON answer: reported below by status.
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.error?.message ?? `HTTP ${response.status}`);
  }
  return body;
}

/**
 * Runs `task` now and every `intervalMs` after it settles (never overlapping).
 * Skips work while the tab is hidden. refresh() runs it again as soon as possible.
 */
function createPoller(task, intervalMs) {
  let stopped = false;
  let timer = 0;
  let running = false;
  let again = false;

  async function run() {
    clearTimeout(timer);
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    if (!document.hidden) await task().catch(() => {});
    running = false;
    if (stopped) return;
    if (again) {
      again = false;
      run();
    } else {
      timer = setTimeout(run, intervalMs);
    }
  }

  run();
  return {
    refresh: run,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/* ------------------------------------------------------------------ shared widgets */

function statusBadge(status) {
  const known = ["ok", "error", "cancelled"].includes(status) ? status : "unknown";
  return el("span", { class: `badge badge-${known}` }, status ?? "unknown");
}

function chip(text, extraClass = "") {
  return el("span", { class: `chip ${extraClass}`.trim() }, text);
}

function banner(kind, text) {
  return el("div", { class: `banner banner-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A status line that pages update in place ("could not load…"); hidden when empty. */
function createNotice() {
  const node = el("div", { class: "notice", hidden: true });
  return {
    node,
    show(kind, text) {
      node.replaceChildren(banner(kind, text));
      node.hidden = false;
    },
    clear() {
      node.replaceChildren();
      node.hidden = true;
    },
  };
}

function liveIndicator() {
  const node = el("span", { class: "live", title: `Refreshes every ${POLL_MS / 1000} s` }, el("span", { class: "live-dot" }), "Live");
  return {
    node,
    set(ok) {
      node.classList.toggle("live-stale", !ok);
      node.lastChild.textContent = ok ? "Live" : "Offline";
    },
  };
}

function field(label, control) {
  return el("label", { class: "field" }, el("span", { class: "field-label" }, label), control);
}

function copyButton(getText, label = "Copy") {
  if (!navigator.clipboard) return null;
  const button = el("button", { type: "button", class: "btn btn-ghost btn-xs" }, label);
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    try {
      await navigator.clipboard.writeText(getText());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = label), 1200);
  });
  return button;
}

/* ------------------------------------------------------------------ router */

let currentCleanup = null;
let loginShown = false;

function mainNode() {
  return document.getElementById("main");
}

function setActiveTab(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.tab === name);
    if (tab.dataset.tab === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
}

/** A tab leads back to its list as last filtered (the Clear button empties the filters). */
function setTabHref(name, hash) {
  document.querySelector(`.tab[data-tab="${name}"]`)?.setAttribute("href", hash);
}

function stopCurrentPage() {
  if (currentCleanup) currentCleanup();
  currentCleanup = null;
}

function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * Routes: #/traces?filters, #/traces/<id>, #/sessions?filters, #/sessions/<session>,
 * #/users/<user>, #/usage. Path segments are URI-encoded (a session name may hold "/").
 */
function route() {
  if (loginShown) return;
  stopCurrentPage();
  const { parts, query } = parseHash();
  const main = mainNode();
  main.replaceChildren();
  window.scrollTo(0, 0);
  const [page, id] = [parts[0], parts[1] == null ? null : safeDecode(parts[1])];
  if (page === "usage") {
    setActiveTab("usage");
    currentCleanup = usagePage(main);
  } else if (page === "traces" && id) {
    setActiveTab("traces");
    currentCleanup = tracePage(main, id);
  } else if (page === "traces") {
    setActiveTab("traces");
    currentCleanup = tracesPage(main, query);
  } else if (page === "sessions" && id) {
    setActiveTab("sessions");
    currentCleanup = sessionPage(main, id);
  } else if (page === "sessions") {
    setActiveTab("sessions");
    currentCleanup = sessionsPage(main, query);
  } else if (page === "users" && id) {
    setActiveTab(null);
    currentCleanup = userPage(main, id);
  } else {
    location.replace("#/traces");
  }
}

/* ------------------------------------------------------------------ login */

/** Replaces the page with a token form; the server sets an HttpOnly cookie on success. */
function showLogin() {
  if (loginShown) return;
  loginShown = true;
  stopCurrentPage();
  setActiveTab(null);
  const input = el("input", { type: "password", name: "token", autocomplete: "current-password", required: true, placeholder: "Admin token" });
  const error = el("p", { class: "login-error", hidden: true });
  const button = el("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = el(
    "form",
    { class: "login card", method: "post", action: `${API_BASE}/ui/login` },
    el("h1", {}, "Sign in to tracegate"),
    el("p", { class: "muted" }, "This instance requires the admin token."),
    input,
    error,
    button,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitLogin(input.value, button, error);
  });
  mainNode().replaceChildren(el("div", { class: "login-wrap" }, form));
  input.focus();
}

async function submitLogin(token, button, error) {
  button.disabled = true;
  error.hidden = true;
  try {
    await fetch(`${API_BASE}/ui/login`, {
      method: "POST",
      credentials: "same-origin",
      body: new URLSearchParams({ token }),
    });
    const probe = await fetch(`${API_BASE}/api/traces?limit=1`, { credentials: "same-origin" });
    if (probe.status === 401) throw new Error("That token was not accepted.");
    location.reload();
  } catch (e) {
    error.textContent = e instanceof TypeError ? "Cannot reach the server." : e.message;
    error.hidden = false;
    button.disabled = false;
  }
}

/* ------------------------------------------------------------------ URL state and filters */

/** "#/traces?team=a" → { parts: ["traces"], query: URLSearchParams("team=a") }. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(mark < 0 ? "" : raw.slice(mark + 1)) };
}

/** "#/traces?team=a&q=x": a page and its state, empty values left out. */
function routeHash(path, state) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state ?? {})) {
    if (String(value ?? "").trim() !== "") params.set(key, String(value).trim());
  }
  const qs = params.toString();
  return qs ? `#/${path}?${qs}` : `#/${path}`;
}

/** Rewrites the address bar (no history entry, no hashchange): a filtered view is a link. */
function reflectInUrl(hash) {
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function userHref(user) {
  return `#/users/${encodeURIComponent(user)}`;
}

function sessionHref(session) {
  return `#/sessions/${encodeURIComponent(session)}`;
}

function openTrace(traceId) {
  location.hash = `#/traces/${encodeURIComponent(traceId)}`;
}

/** A link inside a clickable row: follows its own href, not the row's. */
function rowLink(href, text, attrs = {}) {
  return el("a", { ...attrs, href, onclick: (event) => event.stopPropagation() }, text);
}

function userLink(user) {
  return rowLink(userHref(user), user, { class: "chip chip-link", "data-user": user, title: `User ${user}` });
}

function sessionLink(session) {
  return rowLink(sessionHref(session), session, { class: "chip chip-link mono", "data-session": session, title: `Session ${session}` });
}

/** Links for a list of users or sessions, or a dash. */
function linkList(values, make) {
  return values?.length ? values.map(make) : el("span", { class: "muted" }, DASH);
}

/** Row behaviour: click or Enter on the row itself (not on a link inside it) opens it. */
function rowOpens(open) {
  return {
    tabindex: "0",
    onclick: open,
    onkeydown: (event) => event.key === "Enter" && event.target === event.currentTarget && open(),
  };
}

const PAGE_LIMIT = 50;

const TIME_RANGES = [
  ["", "All time"],
  ["15m", "Last 15 min", 900_000],
  ["1h", "Last 1 h", 3_600_000],
  ["24h", "Last 24 h", 86_400_000],
  ["7d", "Last 7 d", 604_800_000],
  ["custom", "Custom…"],
];

/**
 * The state a list page keeps in its URL: filters (sent to the API) and `limit`, the page
 * size (default PAGE_LIMIT). `since` is a relative range, or "custom" for `from`/`to`
 * (local date-times).
 */
const STATE_KEYS = ["q", "team", "user", "session", "model", "property", "status", "since", "from", "to", "limit"];

const TEXT_FILTERS = {
  q: { label: "Search", placeholder: "text in request or response", type: "search", cls: "input-wide" },
  team: { label: "Team", placeholder: "any" },
  user: { label: "User", placeholder: "any" },
  session: { label: "Session", placeholder: "any" },
  model: { label: "Model", placeholder: "any" },
  property: { label: "Property", placeholder: "name=value" },
};

function readState(query) {
  const state = {};
  for (const key of STATE_KEYS) state[key] = query.get(key) ?? "";
  if ((state.from || state.to) && !state.since) state.since = "custom";
  return state;
}

function hasActiveFilters(state) {
  return STATE_KEYS.some((key) => key !== "limit" && state[key].trim() !== "");
}

/** "env=prod" → ["env", "prod"]; null when there is no name before "=". */
function parseProperty(text) {
  const at = text.indexOf("=");
  if (at <= 0 || !text.slice(0, at).trim()) return null;
  return [text.slice(0, at).trim(), text.slice(at + 1).trim()];
}

/** A local "2026-12-05T10:00" (datetime-local) as unix milliseconds, or null. */
function localToMs(value) {
  const ms = value ? new Date(value).getTime() : NaN;
  return Number.isFinite(ms) ? String(ms) : null;
}

/** The API query of a page's state. */
function apiParams(state) {
  const params = new URLSearchParams();
  for (const key of ["q", "team", "user", "session", "model", "status"]) {
    if (state[key]?.trim()) params.set(key, state[key].trim());
  }
  const property = state.property?.trim() ? parseProperty(state.property) : null;
  if (property) params.set(`property.${property[0]}`, property[1]);
  const range = TIME_RANGES.find(([key]) => key && key === state.since)?.[2];
  if (range) {
    params.set("from", String(Math.floor(Date.now() - range)));
  } else if (state.since === "custom") {
    const from = localToMs(state.from);
    const to = localToMs(state.to);
    if (from) params.set("from", from);
    if (to) params.set("to", to);
  }
  const limit = Number(state.limit);
  params.set("limit", String(Number.isInteger(limit) && limit > 0 ? Math.min(limit, 1000) : PAGE_LIMIT));
  return params;
}

/**
 * The filter controls of a list page: `keys` among TEXT_FILTERS, "status" and "time". Each
 * change updates `state` and calls onChange (typing is debounced); Clear goes to `path` with
 * no filters.
 */
function filterBar(state, keys, path, onChange) {
  const changed = debounce(onChange, 350);
  const controls = [];
  for (const key of keys) {
    if (TEXT_FILTERS[key]) {
      const def = TEXT_FILTERS[key];
      const input = el("input", { type: def.type ?? "text", class: def.cls, value: state[key], placeholder: def.placeholder, spellcheck: "false", "data-filter": key });
      input.addEventListener("input", () => {
        if (key === "property" && input.value.trim() && !parseProperty(input.value)) {
          input.setCustomValidity("A property filter is name=value.");
          input.reportValidity();
          return;
        }
        input.setCustomValidity("");
        state[key] = input.value;
        changed();
      });
      controls.push(field(def.label, input));
    } else if (key === "status") {
      const select = el("select", { "data-filter": "status" }, [["", "Any"], ["ok", "OK"], ["error", "Error"], ["cancelled", "Cancelled"]].map(([value, label]) => el("option", { value }, label)));
      select.value = state.status;
      select.addEventListener("change", () => {
        state.status = select.value;
        onChange();
      });
      controls.push(field("Status", select));
    } else if (key === "time") {
      controls.push(...timeControls(state, onChange));
    }
  }
  const clear = el("button", { type: "button", class: "btn btn-ghost", "data-action": "clear-filters", disabled: !hasActiveFilters(state) }, "Clear");
  clear.addEventListener("click", () => (location.hash = routeHash(path, { limit: state.limit })));
  return el("div", { class: "filters" }, controls, clear);
}

/** The time select, and From/To date-times when it is "Custom…". */
function timeControls(state, onChange) {
  const select = el("select", { "data-filter": "since" }, TIME_RANGES.map(([value, label]) => el("option", { value }, label)));
  select.value = TIME_RANGES.some(([key]) => key === state.since) ? state.since : "";
  const dateTime = (key, label) => {
    const input = el("input", { type: "datetime-local", value: state[key], "data-filter": key, "aria-label": label });
    input.addEventListener("change", () => {
      state[key] = input.value;
      onChange();
    });
    return field(label, input);
  };
  const from = dateTime("from", "From");
  const to = dateTime("to", "To");
  const showCustom = () => {
    from.hidden = to.hidden = select.value !== "custom";
  };
  select.addEventListener("change", () => {
    state.since = select.value;
    if (select.value !== "custom") state.from = state.to = "";
    showCustom();
    onChange();
  });
  showCustom();
  return [field("Time", select), from, to];
}

function countText(n, noun, hasMore) {
  return `${fmtInt(n)} ${noun}${n === 1 ? "" : "s"}${hasMore ? " · more available" : ""}`;
}

/* ------------------------------------------------------------------ paged lists */

/**
 * A list read page by page through next_cursor. The first page is polled when `live` (new
 * items appear on top); "Load more" appends the page after the last one loaded, and whatever
 * was shown stays shown while the first page is polled, so nothing falls between pages.
 * fetchPage(cursor) answers { items, next }.
 */
function createPagedList({ fetchPage, keyOf, onUpdate, onError, live = true }) {
  let first = [];
  let kept = [];
  let cursor = null;
  let extended = false;
  let generation = 0;
  let loading = false;
  const button = el("button", { type: "button", class: "btn load-more", hidden: true }, "Load more");
  button.addEventListener("click", () => loadMore());

  const items = () => {
    const seen = new Set();
    return [...first, ...kept].filter((item) => {
      const key = keyOf(item);
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  };
  const emit = () => {
    button.hidden = cursor == null;
    onUpdate(items(), { hasMore: cursor != null });
  };

  async function loadFirst() {
    const g = generation;
    try {
      const page = await fetchPage(null);
      if (g !== generation) return;
      first = page.items;
      if (!extended) cursor = page.next;
      emit();
    } catch (e) {
      if (g === generation) onError(e);
    }
  }

  async function loadMore() {
    if (cursor == null || loading) return;
    const g = generation;
    loading = true;
    button.disabled = true;
    button.textContent = "Loading…";
    try {
      const page = await fetchPage(cursor);
      if (g !== generation) return;
      kept = [...items(), ...page.items];
      extended = true;
      cursor = page.next;
      emit();
    } catch (e) {
      if (g === generation) onError(e);
    } finally {
      loading = false;
      button.disabled = false;
      button.textContent = "Load more";
    }
  }

  const poller = live ? createPoller(loadFirst, POLL_MS) : null;
  if (!live) loadFirst();
  return {
    button,
    reset() {
      generation++;
      [first, kept, cursor, extended] = [[], [], null, false];
      if (poller) poller.refresh();
      else loadFirst();
    },
    stop() {
      generation++;
      poller?.stop();
    },
  };
}

/** fetchPage for createPagedList over a listing endpoint ("traces" or "sessions"). */
function pageFetcher(endpoint, params) {
  return async (cursor) => {
    const query = new URLSearchParams(typeof params === "function" ? params() : params);
    if (cursor) query.set("cursor", cursor);
    const data = await api(`/api/${endpoint}?${query}`);
    return { items: data?.[endpoint] ?? [], next: data?.next_cursor ?? null };
  };
}

/* ------------------------------------------------------------------ traces list page */

const TRACE_FILTER_KEYS = ["q", "team", "user", "session", "model", "property", "status", "time"];

/** The list as last filtered: the trace page's way back. */
let lastTracesHash = "#/traces";

function tracesPage(main, query) {
  const state = readState(query);
  const notice = createNotice();
  const live = liveIndicator();
  const count = el("span", { class: "muted small", id: "trace-count" });
  const tbody = el("tbody");
  const empty = el("div", { class: "empty", hidden: true });
  const rowCache = new Map();
  let firstLoad = true;
  lastTracesHash = routeHash("traces", state);
  setTabHref("traces", lastTracesHash);

  const list = createPagedList({
    fetchPage: pageFetcher("traces", () => apiParams(state)),
    keyOf: (trace) => trace.trace_id,
    onUpdate(traces, { hasMore }) {
      updateTraceRows(tbody, traces, rowCache, !firstLoad);
      firstLoad = false;
      renderTracesEmpty(empty, traces.length === 0, hasActiveFilters(state));
      count.textContent = countText(traces.length, "trace", hasMore);
      notice.clear();
      live.set(true);
    },
    onError(e) {
      live.set(false);
      if (e.status !== 401) notice.show("error", `Could not load traces: ${e.message}`);
    },
  });
  const refilter = () => {
    lastTracesHash = routeHash("traces", state);
    setTabHref("traces", lastTracesHash);
    reflectInUrl(lastTracesHash);
    clear.disabled = !hasActiveFilters(state);
    rowCache.clear();
    firstLoad = true;
    list.reset();
  };
  const filters = filterBar(state, TRACE_FILTER_KEYS, "traces", refilter);
  const clear = filters.querySelector('[data-action="clear-filters"]');

  main.append(
    el(
      "section",
      { class: "page" },
      el("div", { class: "toolbar" }, filters, el("div", { class: "toolbar-spacer" }), traceSearchBox(), count, live.node),
      notice.node,
      el("div", { class: "card table-card" }, traceTable(tbody, "trace-table"), empty),
      el("div", { class: "more-row" }, list.button),
    ),
  );
  return () => list.stop();
}

function traceSearchBox() {
  const input = el("input", { type: "search", class: "mono", placeholder: "Jump to trace id…", spellcheck: "false", "aria-label": "Trace id" });
  const form = el("form", { class: "trace-search" }, input);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = input.value.trim().toLowerCase();
    if (/^[0-9a-f]{32}$/.test(id)) {
      openTrace(id);
    } else {
      input.setCustomValidity("A trace id is 32 hex digits.");
      input.reportValidity();
    }
  });
  input.addEventListener("input", () => input.setCustomValidity(""));
  return form;
}

function traceTable(tbody, id) {
  const head = ["Root", "Start", "Duration", "Spans", "Tokens in / out", "Cost", "Status", "Teams", "Users", "Session"];
  const numeric = new Set(["Duration", "Spans", "Tokens in / out", "Cost"]);
  return el(
    "table",
    { id, class: "table table-hover" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { class: numeric.has(h) ? "num" : null }, h)))),
    tbody,
  );
}

function traceRow(trace) {
  const models = trace.models ?? [];
  const teams = trace.teams ?? [];
  return el(
    "tr",
    { "data-trace-id": trace.trace_id, ...rowOpens(() => openTrace(trace.trace_id)) },
    el(
      "td",
      { class: "cell-root" },
      el("div", { class: "root-name" }, trace.root_name || "(unnamed)"),
      el("div", { class: "root-sub" }, el("span", { class: "mono" }, shortId(trace.trace_id)), models.length ? ` · ${models.join(", ")}` : null),
    ),
    el("td", { class: "nowrap", title: nsToDate(trace.start_time_unix_nano).toISOString() }, fmtTime(trace.start_time_unix_nano)),
    el("td", { class: "num" }, fmtDuration(trace.duration_ms)),
    el("td", { class: "num" }, fmtInt(trace.span_count)),
    el("td", { class: "num" }, fmtTokens(trace.input_tokens, trace.output_tokens)),
    el("td", { class: "num" }, fmtCostOrUnpriced(trace.cost_usd, (trace.input_tokens ?? 0) + (trace.output_tokens ?? 0) > 0)),
    el("td", {}, statusBadge(trace.status)),
    el("td", { class: "cell-teams" }, teams.length ? teams.map((t) => chip(t)) : el("span", { class: "muted" }, DASH)),
    el("td", { class: "cell-teams" }, linkList(trace.users, userLink)),
    el("td", { class: "cell-teams" }, linkList(trace.sessions, sessionLink)),
  );
}

/** Keyed update: unchanged rows keep their elements, so polling never flickers. */
function updateTraceRows(tbody, traces, cache, markNew) {
  const seen = new Set();
  const rows = traces.map((trace) => {
    seen.add(trace.trace_id);
    const signature = JSON.stringify(trace);
    const cached = cache.get(trace.trace_id);
    if (cached && cached.signature === signature) return cached.row;
    const row = traceRow(trace);
    if (markNew && !cached) row.classList.add("row-new");
    cache.set(trace.trace_id, { signature, row });
    return row;
  });
  for (const id of [...cache.keys()]) if (!seen.has(id)) cache.delete(id);
  const unchanged = rows.length === tbody.children.length && rows.every((row, i) => tbody.children[i] === row);
  if (!unchanged) tbody.replaceChildren(...rows);
}

function renderTracesEmpty(node, isEmpty, filtered) {
  node.hidden = !isEmpty;
  node.parentElement.querySelector("table").hidden = isEmpty;
  if (!isEmpty) return;
  node.replaceChildren(
    filtered
      ? el("div", {}, el("strong", {}, "No traces match these filters."), el("p", { class: "muted" }, "Widen the time range or clear a filter."))
      : el(
          "div",
          {},
          el("strong", {}, "No traces yet — point your SDK at the proxy"),
          el("p", { class: "muted" }, "e.g. set your OpenAI client's base URL to ", el("code", {}, "http://<proxy>/openai/v1"), ". Calls appear here within a couple of seconds."),
        ),
  );
}

/* ------------------------------------------------------------------ sessions list page */

const SESSION_FILTER_KEYS = ["q", "team", "user", "time"];

let lastSessionsHash = "#/sessions";

function sessionsPage(main, query) {
  const state = readState(query);
  const notice = createNotice();
  const live = liveIndicator();
  const count = el("span", { class: "muted small", id: "session-count" });
  const tbody = el("tbody");
  const empty = el("div", { class: "empty", hidden: true });
  lastSessionsHash = routeHash("sessions", state);
  setTabHref("sessions", lastSessionsHash);

  const list = createPagedList({
    fetchPage: pageFetcher("sessions", () => apiParams(state)),
    keyOf: (s) => s.session,
    onUpdate(sessions, { hasMore }) {
      updateKeyedRows(tbody, sessions, (s) => s.session, sessionRow);
      empty.hidden = sessions.length > 0;
      table.hidden = sessions.length === 0;
      fill(
        empty,
        el("strong", {}, hasActiveFilters(state) ? "No sessions match these filters." : "No sessions yet"),
        el("p", { class: "muted" }, "Calls that send ", el("code", {}, "x-tracegate-session: <name>"), " are grouped into sessions."),
      );
      count.textContent = countText(sessions.length, "session", hasMore);
      notice.clear();
      live.set(true);
    },
    onError(e) {
      live.set(false);
      if (e.status !== 401) notice.show("error", `Could not load sessions: ${e.message}`);
    },
  });
  const refilter = () => {
    lastSessionsHash = routeHash("sessions", state);
    setTabHref("sessions", lastSessionsHash);
    reflectInUrl(lastSessionsHash);
    clear.disabled = !hasActiveFilters(state);
    list.reset();
  };
  const filters = filterBar(state, SESSION_FILTER_KEYS, "sessions", refilter);
  const clear = filters.querySelector('[data-action="clear-filters"]');
  const table = sessionTable(tbody, "session-table");

  main.append(
    el(
      "section",
      { class: "page" },
      el("div", { class: "toolbar" }, filters, el("div", { class: "toolbar-spacer" }), count, live.node),
      notice.node,
      el("div", { class: "card table-card" }, table, empty),
      el("div", { class: "more-row" }, list.button),
    ),
  );
  return () => list.stop();
}

function sessionTable(tbody, id) {
  const head = ["Session", "User", "Team", "First call", "Duration", "Traces", "Spans", "Tokens in / out", "Cost", "Errors"];
  const numeric = new Set(["Duration", "Traces", "Spans", "Tokens in / out", "Cost", "Errors"]);
  return el(
    "table",
    { id, class: "table table-hover" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { class: numeric.has(h) ? "num" : null }, h)))),
    tbody,
  );
}

function sessionRow(s) {
  const tokensKnown = (s.input_tokens ?? 0) + (s.output_tokens ?? 0) > 0;
  return el(
    "tr",
    { "data-session": s.session, ...rowOpens(() => (location.hash = sessionHref(s.session))) },
    el("td", { class: "cell-root" }, el("div", { class: "root-name mono" }, s.session)),
    el("td", { class: "cell-teams" }, s.user ? userLink(s.user) : el("span", { class: "muted" }, DASH)),
    el("td", { class: "cell-teams" }, s.team ? chip(s.team) : el("span", { class: "muted" }, DASH)),
    el("td", { class: "nowrap", title: nsToDate(s.first_time_unix_nano).toISOString() }, fmtTime(s.first_time_unix_nano)),
    el("td", { class: "num" }, fmtDuration((Number(s.last_time_unix_nano) - Number(s.first_time_unix_nano)) / 1e6)),
    el("td", { class: "num" }, fmtInt(s.trace_count)),
    el("td", { class: "num" }, fmtInt(s.span_count)),
    el("td", { class: "num" }, fmtTokens(s.input_tokens, s.output_tokens)),
    el("td", { class: "num" }, fmtCostOrUnpriced(s.cost_usd, tokensKnown)),
    el("td", { class: "num" }, s.errors ? el("span", { class: "err-count" }, fmtInt(s.errors)) : "0"),
  );
}

/** Keyed row update for any list (rows rebuilt only when their item changed). */
function updateKeyedRows(tbody, items, keyOf, makeRow) {
  const cache = (tbody._rows ??= new Map());
  const seen = new Set();
  const rows = items.map((item) => {
    const key = keyOf(item);
    seen.add(key);
    const signature = JSON.stringify(item);
    const cached = cache.get(key);
    if (cached && cached.signature === signature) return cached.row;
    const row = makeRow(item);
    cache.set(key, { signature, row });
    return row;
  });
  for (const key of [...cache.keys()]) if (!seen.has(key)) cache.delete(key);
  const unchanged = rows.length === tbody.children.length && rows.every((row, i) => tbody.children[i] === row);
  if (!unchanged) tbody.replaceChildren(...rows);
}

/* ------------------------------------------------------------------ session page */

/** Pages of one session's traces read at most (1000 traces each). */
const SESSION_MAX_PAGES = 20;

function sessionPage(main, session) {
  const notice = createNotice();
  const header = el("div", { class: "trace-header" });
  const stats = el("div", { class: "stats", id: "session-totals" });
  const tbody = el("tbody");
  const note = el("p", { class: "muted small", hidden: true });
  const refresh = el("button", { type: "button", class: "btn" }, "Refresh");
  let generation = 0;

  header.append(
    el("div", { class: "trace-title-row" }, el("span", { class: "page-kind" }, "Session"), el("h1", { class: "trace-title mono", id: "session-name" }, session), copyButton(() => session, "Copy")),
    el("div", { class: "trace-id-row" }, rowLink(routeHash("traces", { session }), "Open in the trace list →"), note),
  );
  main.append(
    el(
      "section",
      { class: "page" },
      el("div", { class: "crumbs" }, el("a", { href: lastSessionsHash }, "← Sessions")),
      header,
      stats,
      notice.node,
      el(
        "div",
        { class: "card table-card" },
        el("div", { class: "card-head" }, el("h2", { class: "card-title" }, "Traces, oldest first"), refresh),
        traceTable(tbody, "session-traces"),
      ),
    ),
  );

  async function load() {
    const g = ++generation;
    refresh.disabled = true;
    try {
      const [totals, traces] = await Promise.all([sessionTotals(session), sessionTraces(session)]);
      if (g !== generation) return;
      notice.clear();
      stats.replaceChildren(...sessionStats(totals));
      fill(
        header.querySelector(".trace-id-row"),
        rowLink(routeHash("traces", { session }), "Open in the trace list →"),
        totals?.user ? [el("span", {}, " · user "), userLink(totals.user)] : null,
        totals?.team ? [el("span", {}, " · team "), chip(totals.team)] : null,
        traces.truncated ? el("span", { class: "muted small" }, ` · the first ${fmtInt(traces.items.length)} traces`) : null,
      );
      updateTraceRows(tbody, traces.items, new Map(), false);
      if (!traces.items.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: "10", class: "empty-cell" }, "No traces in this session.")));
    } catch (e) {
      if (g === generation && e.status !== 401) notice.show("error", `Could not load the session: ${e.message}`);
    } finally {
      if (g === generation) refresh.disabled = false;
    }
  }
  refresh.addEventListener("click", load);
  load();
  return () => generation++;
}

/** The session's row of /api/sessions (totals over all its spans), or null. */
async function sessionTotals(session) {
  const data = await api(`/api/sessions?${new URLSearchParams({ session, limit: "10" })}`);
  return (data?.sessions ?? []).find((s) => s.session === session) ?? null;
}

/** Every trace of the session (up to SESSION_MAX_PAGES pages), oldest first. */
async function sessionTraces(session) {
  const byId = new Map();
  let cursor = null;
  for (let page = 0; page < SESSION_MAX_PAGES; page++) {
    const params = new URLSearchParams({ session, limit: "1000" });
    if (cursor) params.set("cursor", cursor);
    const data = await api(`/api/traces?${params}`);
    for (const trace of data?.traces ?? []) byId.set(trace.trace_id, trace);
    cursor = data?.next_cursor ?? null;
    if (!cursor) break;
  }
  const items = [...byId.values()].sort(
    (a, b) => Number(a.start_time_unix_nano) - Number(b.start_time_unix_nano) || String(a.trace_id).localeCompare(String(b.trace_id)),
  );
  return { items, truncated: cursor != null };
}

function sessionStats(s) {
  const stat = (key, label, value, cls = "") =>
    el("div", { class: "stat", "data-stat": key }, el("div", { class: "stat-label" }, label), el("div", { class: `stat-value ${cls}` }, value));
  if (!s) return [stat("none", "Session", "No spans recorded for this session.")];
  const tokensKnown = (s.input_tokens ?? 0) + (s.output_tokens ?? 0) > 0;
  return [
    stat("traces", "Traces", fmtInt(s.trace_count)),
    stat("spans", "Spans", fmtInt(s.span_count)),
    stat("tokens", "Tokens in / out", fmtTokens(s.input_tokens, s.output_tokens)),
    stat("cost", "Cost", fmtCostOrUnpriced(s.cost_usd, tokensKnown)),
    stat("errors", "Errors", fmtInt(s.errors), s.errors ? "err-count" : ""),
    stat("first", "First call", fmtTime(s.first_time_unix_nano)),
    stat("last", "Last call", fmtTime(s.last_time_unix_nano)),
    stat("span", "Duration", fmtDuration((Number(s.last_time_unix_nano) - Number(s.first_time_unix_nano)) / 1e6)),
  ];
}

/* ------------------------------------------------------------------ user page */

const USER_SPEND_DAYS = 30;
const USER_LIST_LIMIT = 10;

function userPage(main, user) {
  const spendNotice = createNotice();
  const cards = el("div", { class: "cards", id: "user-spend" });
  const models = el("div", { class: "card table-card" });
  const sections = [
    pagedSection({ title: "Sessions", id: "user-sessions", endpoint: "sessions", params: { user }, head: sessionTable, row: sessionRow, keyOf: (s) => s.session, empty: "No sessions for this user." }),
    pagedSection({ title: "Errors", id: "user-errors", endpoint: "traces", params: { user, status: "error" }, head: traceTable, row: traceRow, keyOf: (t) => t.trace_id, empty: "No failed calls for this user." }),
    pagedSection({ title: "Recent traces", id: "user-traces", endpoint: "traces", params: { user }, head: traceTable, row: traceRow, keyOf: (t) => t.trace_id, empty: "No traces for this user." }),
  ];
  let stopped = false;

  main.append(
    el(
      "section",
      { class: "page" },
      el("div", { class: "crumbs" }, el("a", { href: lastTracesHash }, "← Traces")),
      el(
        "div",
        { class: "trace-header" },
        el("div", { class: "trace-title-row" }, el("span", { class: "page-kind" }, "User"), el("h1", { class: "trace-title", id: "user-name" }, user)),
        el(
          "div",
          { class: "trace-id-row" },
          el("a", { href: routeHash("traces", { user }) }, "All traces →"),
          el("span", {}, " · "),
          el("a", { href: routeHash("sessions", { user }) }, "All sessions →"),
        ),
      ),
      el("h2", { class: "section-heading" }, `Spend, last ${USER_SPEND_DAYS} days (UTC)`),
      spendNotice.node,
      cards,
      models,
      sections.map((s) => s.node),
    ),
  );

  (async () => {
    const range = `from=${isoDay(1 - USER_SPEND_DAYS)}&to=${isoDay(0)}&user=${encodeURIComponent(user)}`;
    try {
      const [byUser, byModel] = await Promise.all([api(`/api/usage?${range}&group_by=user`), api(`/api/usage?${range}&group_by=user,model`)]);
      if (stopped) return;
      const totals = (byUser?.rows ?? []).find((r) => r.user === user) ?? { requests: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, errors: 0 };
      const rows = sortGroupRows((byModel?.rows ?? []).filter((r) => r.user === user), "model");
      cards.replaceChildren(...totalCards(totals));
      models.replaceChildren(usageTable(rows, totals, "model", seriesColors(rows.map((r) => groupKey(r.model))), "user-models"));
    } catch (e) {
      if (!stopped && e.status !== 401) spendNotice.show("error", `Could not load spend: ${e.message}`);
    }
  })();

  return () => {
    stopped = true;
    sections.forEach((s) => s.stop());
  };
}

/** A titled table read by pages of USER_LIST_LIMIT with its own "Load more". */
function pagedSection({ title, id, endpoint, params, head, row, keyOf, empty }) {
  const tbody = el("tbody");
  const count = el("span", { class: "muted small" });
  const notice = createNotice();
  const list = createPagedList({
    fetchPage: pageFetcher(endpoint, { ...params, limit: String(USER_LIST_LIMIT) }),
    keyOf,
    live: false,
    onUpdate(items, { hasMore }) {
      notice.clear();
      count.textContent = countText(items.length, endpoint === "sessions" ? "session" : "trace", hasMore);
      if (items.length) updateKeyedRows(tbody, items, keyOf, row);
      else tbody.replaceChildren(el("tr", { class: "empty-row" }, el("td", { colspan: "10", class: "empty-cell" }, empty)));
    },
    onError(e) {
      if (e.status !== 401) notice.show("error", `Could not load ${title.toLowerCase()}: ${e.message}`);
    },
  });
  const node = el(
    "section",
    { class: "list-section", id },
    el("div", { class: "section-head" }, el("h2", { class: "section-heading" }, title), count),
    notice.node,
    el("div", { class: "card table-card" }, head(tbody, `${id}-table`)),
    el("div", { class: "more-row" }, list.button),
  );
  return { node, stop: () => list.stop() };
}

/* ------------------------------------------------------------------ trace page */

function tracePage(main, traceId) {
  const notice = createNotice();
  const header = el("div", { class: "trace-header" });
  const waterfall = el("div", { class: "card waterfall-card" });
  const panel = el("aside", { id: "span-panel", class: "span-panel card", hidden: true });
  const state = { traceId, spans: [], signature: "", selectedId: null, panelToken: 0 };

  main.append(
    el(
      "section",
      { class: "page" },
      el("div", { class: "crumbs" }, el("a", { href: lastTracesHash }, "← Traces")),
      header,
      notice.node,
      el("div", { class: "trace-layout" }, waterfall, panel),
    ),
  );
  header.append(el("h1", { class: "trace-title mono" }, traceId));

  const select = (span) => {
    state.selectedId = span.span_id;
    markSelected(waterfall, span.span_id);
    showSpanPanel(panel, state, span);
  };

  async function load() {
    try {
      const data = await api(`/api/traces/${encodeURIComponent(traceId)}`);
      notice.clear();
      const spans = data?.spans ?? [];
      const signature = JSON.stringify(spans);
      if (signature === state.signature) return;
      state.signature = signature;
      state.spans = spans;
      header.replaceChildren(...traceHeader(traceId, spans));
      waterfall.replaceChildren(renderWaterfall(spans, select));
      if (state.selectedId) markSelected(waterfall, state.selectedId);
    } catch (e) {
      if (e.status === 401) return;
      if (e.status === 404) notice.show("info", "Trace not found (yet). Waiting for spans with this id…");
      else notice.show("error", `Could not load the trace: ${e.message}`);
      if (e.status === 400) poller.stop();
    }
  }

  const poller = createPoller(load, POLL_MS);
  return () => poller.stop();
}

/** Aggregates shown in the trace header. */
function traceSummary(spans) {
  const starts = spans.map((s) => Number(s.start_time_unix_nano));
  const t0 = Math.min(...starts);
  const end = Math.max(...spans.map((s, i) => starts[i] + (s.duration_ms ?? 0) * 1e6));
  const sum = (key, of = spans) => of.reduce((acc, s) => (s[key] == null ? acc : (acc ?? 0) + s[key]), null);
  // Tokens of proxied calls only: an app's GenAI span may describe one of those very calls.
  const calls = spans.filter((s) => s.kind === "llm");
  const statuses = new Set(spans.map((s) => s.status));
  return {
    start: t0,
    durationMs: (end - t0) / 1e6,
    inputTokens: sum("input_tokens", calls),
    outputTokens: sum("output_tokens", calls),
    cost: sum("cost_usd"),
    status: statuses.has("error") ? "error" : statuses.has("cancelled") ? "cancelled" : "ok",
    teams: [...new Set(spans.map((s) => s.team).filter(Boolean))],
    users: [...new Set(spans.map((s) => s.user).filter(Boolean))],
    sessions: [...new Set(spans.map((s) => s.session).filter(Boolean))],
  };
}

function traceHeader(traceId, spans) {
  const summary = traceSummary(spans);
  const roots = buildTree(spans).filter((row) => row.depth === 0);
  const stat = (label, value, cls = "") => el("div", { class: "stat" }, el("div", { class: "stat-label" }, label), el("div", { class: `stat-value ${cls}` }, value));
  return [
    el(
      "div",
      { class: "trace-title-row" },
      el("h1", { class: "trace-title" }, roots[0]?.span.name ?? "Trace"),
      statusBadge(summary.status),
    ),
    el("div", { class: "trace-id-row" }, el("span", { class: "mono trace-id" }, traceId), copyButton(() => traceId, "Copy id")),
    el(
      "div",
      { class: "stats" },
      stat("Started", fmtTime(summary.start)),
      stat("Duration", fmtDuration(summary.durationMs)),
      stat("Spans", fmtInt(spans.length)),
      stat("Tokens in / out", fmtTokens(summary.inputTokens, summary.outputTokens)),
      stat("Cost", fmtCostOrUnpriced(summary.cost, (summary.inputTokens ?? 0) + (summary.outputTokens ?? 0) > 0)),
      stat("Teams", summary.teams.length ? summary.teams.join(", ") : DASH),
      summary.users.length ? stat("Users", summary.users.map(userLink)) : null,
      summary.sessions.length ? stat("Session", summary.sessions.map(sessionLink)) : null,
    ),
  ];
}

/** Depth-first span order; a span whose parent is absent from the trace is a root. */
function buildTree(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id;
    if (parent && parent !== span.span_id && byId.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(span);
    } else {
      roots.push(span);
    }
  }
  const rows = [];
  const visited = new Set();
  const visit = (span, depth) => {
    if (visited.has(span)) return;
    visited.add(span);
    rows.push({ span, depth });
    for (const child of children.get(span.span_id) ?? []) visit(child, depth + 1);
  };
  roots.forEach((span) => visit(span, 0));
  spans.forEach((span) => visit(span, 0)); // spans caught in a parent cycle
  return rows;
}

function renderWaterfall(spans, onSelect) {
  const t0 = Math.min(...spans.map((s) => Number(s.start_time_unix_nano)));
  const offsetMs = (s) => (Number(s.start_time_unix_nano) - t0) / 1e6;
  const totalMs = Math.max(...spans.map((s) => offsetMs(s) + (s.duration_ms ?? 0)), 0.001);
  const step = niceStep(totalMs, 6);
  const ticks = [];
  for (let t = 0; t <= totalMs + 1e-9; t += step) ticks.push(t);
  const pct = (ms) => `${Math.min(100, (ms / totalMs) * 100)}%`;

  const axis = el(
    "div",
    { class: "wf-row wf-axis" },
    el("div", { class: "wf-label wf-axis-label" }, "Span"),
    el("div", { class: "wf-track" }, el("div", { class: "wf-lane" }, ticks.map((t) => el("span", { class: "wf-tick", style: { left: pct(t) } }, fmtTick(t))))),
  );
  const grid = el("div", { class: "wf-grid", "aria-hidden": "true" }, el("div", { class: "wf-lane" }, ticks.map((t) => el("span", { class: "wf-gridline", style: { left: pct(t) } }))));
  const rows = buildTree(spans).map(({ span, depth }) => waterfallRow(span, depth, offsetMs(span), totalMs, onSelect));
  return el("div", { class: "waterfall" }, axis, el("div", { class: "wf-body" }, grid, rows));
}

/** Muted text after a span's name: provider (and model unless the name has it) or service. */
function spanSubtitle(span) {
  if (span.kind !== "llm") return span.properties?.["service.name"] ?? "";
  const model = span.response_model ?? span.request_model;
  const showModel = model && !String(span.name ?? "").includes(model);
  return [span.provider, showModel ? model : null].filter(Boolean).join(" · ");
}

function waterfallRow(span, depth, startMs, totalMs, onSelect) {
  const select = () => onSelect(span);
  const label = el(
    "div",
    { class: "wf-label", style: { paddingLeft: `${10 + depth * 16}px` }, title: span.name },
    el("span", { class: `kind-dot kind-${span.kind === "llm" ? "llm" : "app"}` }),
    el("span", { class: "wf-name" }, span.name || "(unnamed)"),
    el("span", { class: "wf-sub" }, spanSubtitle(span)),
  );
  const track = el("div", { class: "wf-track" }, el("div", { class: "wf-lane" }, spanBar(span, startMs, totalMs)));
  return el(
    "div",
    {
      class: "wf-row wf-span",
      "data-row-span-id": span.span_id,
      tabindex: "0",
      role: "button",
      onclick: select,
      onkeydown: (event) => (event.key === "Enter" || event.key === " ") && (event.preventDefault(), select()),
    },
    label,
    track,
  );
}

function spanBar(span, startMs, totalMs) {
  const durationMs = span.duration_ms ?? 0;
  const leftPct = (startMs / totalMs) * 100;
  const widthPct = Math.max((durationMs / totalMs) * 100, 0);
  const kind = span.kind === "llm" ? "llm" : "app";
  const status = ["error", "cancelled"].includes(span.status) ? span.status : "ok";
  // Duration text inside wide bars, else beside the bar on whichever side has room.
  const textPlace = widthPct > 14 ? "inside" : leftPct + widthPct < 82 ? "right" : "left";
  const ttft = span.stream && span.ttft_ms != null && durationMs > 0
    ? el("span", { class: "ttft-mark", style: { left: `${Math.min(100, (span.ttft_ms / durationMs) * 100)}%` }, title: `TTFT ${fmtDuration(span.ttft_ms)}` })
    : null;
  return el(
    "div",
    {
      class: `span-bar bar-${kind} bar-${status} text-${textPlace}`,
      "data-span-id": span.span_id,
      style: { left: `${leftPct}%`, width: `${widthPct}%` },
      title: `${span.name}: ${fmtDuration(durationMs)}${span.ttft_ms != null ? ` (TTFT ${fmtDuration(span.ttft_ms)})` : ""}`,
    },
    ttft,
    el("span", { class: "bar-text" }, fmtDuration(durationMs)),
  );
}

function markSelected(waterfall, spanId) {
  for (const row of waterfall.querySelectorAll(".wf-span")) {
    row.classList.toggle("selected", row.getAttribute("data-row-span-id") === spanId);
  }
}

/* ------------------------------------------------------------------ span panel */

const SPAN_FIELDS = [
  ["span_id", "Span id", "mono"],
  ["parent_span_id", "Parent", "mono"],
  ["kind", "Kind"],
  ["span_kind", "OTel kind"],
  ["status", "Status", "status"],
  ["status_code", "HTTP status"],
  ["provider", "Provider"],
  ["operation", "Operation"],
  ["request", "Request"],
  ["request_model", "Request model"],
  ["response_model", "Response model"],
  ["stream", "Stream", "bool"],
  ["start_time_unix_nano", "Start", "time"],
  ["duration_ms", "Duration", "duration"],
  ["ttft_ms", "TTFT", "duration"],
  ["input_tokens", "Input tokens", "int"],
  ["output_tokens", "Output tokens", "int"],
  ["usage_source", "Usage source"],
  ["cache_read_input_tokens", "Cache read", "int"],
  ["cache_creation_input_tokens", "Cache write", "int"],
  ["reasoning_tokens", "Reasoning tokens", "int"],
  ["finish_reason", "Finish reason"],
  ["cost_usd", "Cost", "cost"],
  ["team", "Team"],
  ["user", "User", "user"],
  ["key_fingerprint", "Key", "mono"],
  ["session", "Session", "session"],
];

function fieldValue(span, key, type) {
  const value = key === "request" ? [span.method, span.path].filter(Boolean).join(" ") || null : span[key];
  if (type === "cost" && value == null && span.kind === "llm" && span.input_tokens != null && (span.response_model || span.request_model)) {
    return fmtCostOrUnpriced(null, true);
  }
  if (value == null || value === "") return null;
  switch (type) {
    case "status": return statusBadge(value);
    case "bool": return value ? "yes" : "no";
    case "time": return fmtDateTimeMs(value);
    case "duration": return fmtDuration(value);
    case "int": return fmtInt(value);
    case "cost": return fmtCost(value);
    case "user": return el("a", { href: userHref(String(value)), "data-user": String(value) }, String(value));
    case "session": return el("a", { href: sessionHref(String(value)), class: "mono", "data-session": String(value) }, String(value));
    default: return String(value);
  }
}

function kvGrid(entries) {
  return el(
    "dl",
    { class: "kv" },
    entries.map(([label, value, cls]) => [el("dt", {}, label), el("dd", { class: cls || null }, value)]),
  );
}

/** Fields that only mean something for proxied LLM calls (usage source: or app spans with tokens). */
const LLM_ONLY_FIELDS = new Set(["stream", "usage_source"]);

function spanFieldEntries(span) {
  const entries = [];
  const hasTokens = span.input_tokens != null || span.output_tokens != null;
  for (const [key, label, type] of SPAN_FIELDS) {
    if (span.kind !== "llm" && LLM_ONLY_FIELDS.has(key) && !(key === "usage_source" && hasTokens)) continue;
    const value = fieldValue(span, key, type);
    if (value == null) continue;
    const cls = type === "mono" ? "mono" : "";
    entries.push([label, value, cls]);
  }
  return entries;
}

function propertyEntries(properties) {
  return Object.entries(properties ?? {}).map(([key, value]) => [key, typeof value === "string" ? value : JSON.stringify(value), "mono"]);
}

/** An ingested span's events: name and offset from the span's start, then their attributes. */
function eventList(span) {
  const events = span.events ?? [];
  if (!events.length) return null;
  const start = Number(span.start_time_unix_nano);
  return [
    el("h3", { class: "section-title" }, `Events (${events.length})`),
    events.map((e) =>
      el(
        "div",
        { class: `span-event${e.name === "exception" ? " span-event-exception" : ""}` },
        el("div", { class: "span-event-head" }, el("span", {}, e.name || "(unnamed)"), el("span", { class: "muted" }, `+${fmtDuration((Number(e.time_unix_nano) - start) / 1e6)}`)),
        Object.keys(e.attributes ?? {}).length ? kvGrid(propertyEntries(e.attributes)) : null,
      ),
    ),
  ];
}

function showSpanPanel(panel, state, span) {
  const token = ++state.panelToken;
  panel.dataset.spanId = span.span_id;
  const close = el("button", { type: "button", class: "btn btn-ghost btn-icon", "aria-label": "Close span details", title: "Close" }, "×");
  close.addEventListener("click", () => {
    panel.hidden = true;
    state.selectedId = null;
    state.panelToken++;
    markSelected(panel.parentElement, null);
  });
  const bodies = el("div", { class: "bodies" }, el("p", { class: "muted small" }, "Loading bodies…"));
  const properties = propertyEntries(span.properties);
  fill(
    panel,
    el(
      "div",
      { class: "panel-head" },
      el("span", { class: `kind-dot kind-${span.kind === "llm" ? "llm" : "app"}` }),
      el("h2", { class: "panel-title", title: span.name }, span.name || "(unnamed)"),
      close,
    ),
    span.error ? el("div", { class: "span-error" }, span.error) : null,
    kvGrid(spanFieldEntries(span)),
    properties.length ? [el("h3", { class: "section-title" }, "Properties"), kvGrid(properties)] : null,
    eventList(span),
    bodies,
  );
  panel.hidden = false;
  loadBodies(state, span, token, bodies);
}

async function loadBodies(state, span, token, container) {
  try {
    const detail = await api(`/api/traces/${encodeURIComponent(state.traceId)}/spans/${encodeURIComponent(span.span_id)}`);
    if (token !== state.panelToken) return;
    fill(
      container,
      detail.bodies_truncated ? banner("warn", "Bodies truncated: the capture limit was reached.") : null,
      bodySection("Request body", detail.request_body, false),
      bodySection("Response body", detail.response_body, true),
    );
  } catch (e) {
    if (token !== state.panelToken) return;
    container.replaceChildren(banner("error", `Could not load bodies: ${e.message}`));
  }
}

function bodySection(title, body, isResponse) {
  const head = el("div", { class: "body-head" }, el("h3", { class: "section-title" }, title));
  if (body == null) {
    return el("section", { class: "body" }, head, el("p", { class: "muted small" }, "Not captured."));
  }
  const rawText = typeof body === "string" ? body : JSON.stringify(body, null, 2);
  const stream = isResponse ? assembleStream(body) : null;
  let content;
  if (stream) {
    content = streamView(stream, rawText, head);
  } else if (typeof body === "string") {
    content = el("pre", { class: "code" }, body);
  } else {
    content = el("pre", { class: "code json" }, rawText.length > MAX_RICH_JSON_CHARS ? rawText : renderJson(body, 0));
  }
  head.append(copyButton(() => rawText));
  return el("section", { class: "body" }, head, content);
}

/** Assembled text with a "raw …" toggle button (SSE, JSON array, event stream) added to the head. */
function streamView(stream, raw, head) {
  const assembled = el("pre", { class: "code assembled" }, stream.text || "(no text content in the stream)");
  const rawPre = el("pre", { class: "code raw-sse", hidden: true }, raw);
  const toggle = el("button", { type: "button", class: "btn btn-xs raw-toggle", "aria-pressed": "false" }, `raw ${stream.kind}`);
  toggle.addEventListener("click", () => {
    const showRaw = rawPre.hidden;
    rawPre.hidden = !showRaw;
    assembled.hidden = showRaw;
    toggle.setAttribute("aria-pressed", String(showRaw));
    toggle.classList.toggle("active", showRaw);
  });
  head.append(el("span", { class: "body-note" }, `stream · ${stream.events} events`), toggle);
  return el("div", {}, assembled, rawPre);
}

/**
 * Text carried by one stream event: OpenAI chat (Azure's content-filter chunks, with empty
 * `choices`, carry none), OpenAI Responses, Anthropic, Gemini (thought parts left out), Bedrock
 * ConverseStream, and Bedrock InvokeModelWithResponseStream's base64 `bytes` (the model's own
 * event inside: Anthropic, Titan's `outputText`, Llama's `generation`).
 */
function deltaText(event, depth = 0) {
  if (!event || typeof event !== "object") return "";
  const chat = event.choices?.[0]?.delta?.content;
  if (typeof chat === "string") return chat;
  if (event.type === "response.output_text.delta" && typeof event.delta === "string") return event.delta;
  if (event.type === "content_block_delta" && typeof event.delta?.text === "string") return event.delta.text;
  const parts = event.candidates?.[0]?.content?.parts;
  if (Array.isArray(parts)) {
    return parts.filter((p) => p && !p.thought && typeof p.text === "string").map((p) => p.text).join("");
  }
  if (typeof event.contentBlockIndex === "number" && typeof event.delta?.text === "string") return event.delta.text;
  if (typeof event.outputText === "string") return event.outputText;
  if (typeof event.generation === "string") return event.generation;
  if (typeof event.bytes === "string" && depth === 0) {
    try {
      const bytes = Uint8Array.from(atob(event.bytes), (c) => c.charCodeAt(0));
      return deltaText(JSON.parse(new TextDecoder().decode(bytes)), 1);
    } catch {
      return "";
    }
  }
  return "";
}

/**
 * A streamed response body assembled into its text, or null when it is not a stream: SSE (every
 * format with `data:` lines), Gemini's streamed JSON array (parsed whole by the API, or as text
 * when cut short), and AWS event-stream frames (Bedrock), which reach the UI as lossy text.
 */
function assembleStream(body) {
  if (Array.isArray(body)) {
    if (!body.some((e) => e && typeof e === "object" && "candidates" in e)) return null;
    return { text: body.map((e) => deltaText(e)).join(""), events: body.length, kind: "JSON array" };
  }
  if (typeof body !== "string") return null;
  const sse = assembleSse(body);
  if (sse) return sse;
  if (body.includes(":event-type") || body.includes(":message-type")) return assembleObjects(body, "event stream");
  if (body.trimStart().startsWith("[")) return assembleObjects(body, "JSON array");
  return null;
}

/** Parses raw SSE text; null when it does not look like a stream of JSON data lines. */
function assembleSse(raw) {
  let events = 0;
  let text = "";
  for (const line of raw.split(/\r?\n/)) {
    if (!line.startsWith("data:")) continue;
    const payload = line.slice(5).trim();
    if (!payload || payload === "[DONE]") continue;
    try {
      text += deltaText(JSON.parse(payload));
      events++;
    } catch {
      // A non-JSON data line: keep going, the raw view still shows it.
    }
  }
  return events > 0 ? { text, events, kind: "SSE" } : null;
}

/**
 * The JSON objects found in `raw` in order, assembled: each `{` that opens a balanced, parseable
 * object is one event (binary frame bytes between them, or a cut-off tail, are skipped). The scan
 * is bounded so a large body of stray braces cannot stall the page.
 */
function assembleObjects(raw, kind) {
  let events = 0;
  let text = "";
  let budget = 4 * raw.length + 100_000;
  let i = raw.indexOf("{");
  while (i !== -1 && budget > 0) {
    let depth = 0;
    let inString = false;
    let end = -1;
    for (let j = i; j < raw.length && budget > 0; j++, budget--) {
      const c = raw[j];
      if (inString) {
        if (c === "\\") j++;
        else if (c === '"') inString = false;
      } else if (c === '"') inString = true;
      else if (c === "{") depth++;
      else if (c === "}" && --depth === 0) {
        end = j + 1;
        break;
      }
    }
    if (end > 0) {
      try {
        text += deltaText(JSON.parse(raw.slice(i, end)));
        events++;
        i = raw.indexOf("{", end);
        continue;
      } catch {
        // Frame bytes that happen to be a brace: try the next one.
      }
    }
    i = raw.indexOf("{", i + 1);
  }
  return events > 0 ? { text, events, kind } : null;
}

/** Pretty-printed JSON as DOM nodes with token classes for colouring. */
function renderJson(value, indent) {
  const pad = "  ".repeat(indent);
  const padInner = "  ".repeat(indent + 1);
  if (value === null) return el("span", { class: "j-null" }, "null");
  if (typeof value === "string") return el("span", { class: "j-str" }, JSON.stringify(value));
  if (typeof value === "number") return el("span", { class: "j-num" }, String(value));
  if (typeof value === "boolean") return el("span", { class: "j-bool" }, String(value));
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
  const [open, close] = isArray ? ["[", "]"] : ["{", "}"];
  if (entries.length === 0) return document.createTextNode(open + close);
  const frag = document.createDocumentFragment();
  frag.append(`${open}\n`);
  entries.forEach(([key, item], i) => {
    frag.append(padInner);
    if (!isArray) frag.append(el("span", { class: "j-key" }, JSON.stringify(key)), ": ");
    frag.append(renderJson(item, indent + 1), i < entries.length - 1 ? ",\n" : "\n");
  });
  frag.append(`${pad}${close}`);
  return frag;
}

/* ------------------------------------------------------------------ usage page */

const PALETTE = ["#4f5bd5", "#14a38b", "#f29d38", "#d9487f", "#3a9be0", "#8a5cf0", "#7aa83a", "#e0673a", "#2bb3c0"];
const NONE_COLOR = "#b3bac5";
const OTHER_COLOR = "#8b95a5";
const MAX_SERIES = 8;
const NONE_KEY = "\u0000none";
const OTHER_KEY = "\u0000other";

function isoDay(offsetDays = 0) {
  return new Date(Date.now() + offsetDays * 86_400_000).toISOString().slice(0, 10);
}

/** Usage days are UTC; the defaults cover the last 14 days including today. */
const usageState = { from: isoDay(-13), to: isoDay(0), group: "team" };

function groupKey(value) {
  return value == null || value === "" ? NONE_KEY : String(value);
}

function groupLabel(key) {
  return key === NONE_KEY ? "(none)" : key === OTHER_KEY ? "other" : key;
}

function dayRange(from, to) {
  const days = [];
  const end = Date.parse(`${to}T00:00:00Z`);
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= end && days.length < 1000; t += 86_400_000) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  return days;
}

function usagePage(main) {
  const notice = createNotice();
  const cards = el("div", { class: "cards" });
  const costChart = el("div", { class: "chart" });
  const tokenChart = el("div", { class: "chart" });
  const costLegend = el("div", { class: "legend" });
  const tokenLegend = el("div", { class: "legend" });
  const table = el("div", { class: "card table-card" });
  let last = null;
  let requestId = 0;

  main.append(
    el(
      "section",
      { class: "page" },
      usageToolbar(() => load()),
      notice.node,
      cards,
      el(
        "div",
        { class: "charts" },
        chartCard("Cost per day", costLegend, costChart),
        chartCard("Tokens per day (input + output)", tokenLegend, tokenChart),
      ),
      table,
    ),
  );

  function renderCharts() {
    if (!last) return;
    const { byDay, colors, days } = last;
    drawStackedChart(costChart, costLegend, days, byDay, colors, (r) => r.cost_usd ?? 0, "cost");
    drawStackedChart(tokenChart, tokenLegend, days, byDay, colors, (r) => (r.input_tokens ?? 0) + (r.output_tokens ?? 0), "tokens");
  }

  async function load() {
    const { from, to, group } = usageState;
    if (!from || !to || from > to) {
      notice.show("error", "Choose a valid date range: “from” must not be after “to”.");
      return;
    }
    const id = ++requestId;
    const range = `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
    try {
      const [byDay, byGroup] = await Promise.all([
        api(`/api/usage?${range}&group_by=day,${group}`),
        api(`/api/usage?${range}&group_by=${group}`),
      ]);
      if (id !== requestId) return;
      notice.clear();
      const groupRows = sortGroupRows(byGroup.rows ?? [], group);
      const colors = seriesColors(groupRows.map((r) => groupKey(r[group])));
      last = { byDay: byDay.rows ?? [], colors, days: dayRange(from, to), group };
      cards.replaceChildren(...totalCards(byGroup.totals ?? {}));
      table.replaceChildren(usageTable(groupRows, byGroup.totals ?? {}, group, colors));
      renderCharts();
    } catch (e) {
      if (id === requestId && e.status !== 401) notice.show("error", `Could not load usage: ${e.message}`);
    }
  }

  const onResize = debounce(renderCharts, 150);
  window.addEventListener("resize", onResize);
  load();
  return () => {
    requestId++;
    window.removeEventListener("resize", onResize);
  };
}

function usageToolbar(onChange) {
  const date = (key) => {
    const input = el("input", { type: "date", value: usageState[key], required: true });
    input.addEventListener("change", () => {
      usageState[key] = input.value;
      onChange();
    });
    return input;
  };
  const segment = el(
    "div",
    { class: "segmented", role: "group", "aria-label": "Group by" },
    ["team", "model"].map((g) => {
      const button = el("button", { type: "button", "data-group": g, class: usageState.group === g ? "active" : null }, g === "team" ? "Team" : "Model");
      button.addEventListener("click", () => {
        usageState.group = g;
        for (const b of segment.children) b.classList.toggle("active", b === button);
        onChange();
      });
      return button;
    }),
  );
  const refresh = el("button", { type: "button", class: "btn" }, "Refresh");
  refresh.addEventListener("click", onChange);
  return el(
    "div",
    { class: "toolbar" },
    el("div", { class: "filters" }, field("From (UTC)", date("from")), field("To (UTC)", date("to")), field("Group by", segment)),
    el("div", { class: "toolbar-spacer" }),
    refresh,
  );
}

function totalCards(totals) {
  const card = (key, label, text, sub) =>
    el(
      "div",
      { class: "card stat-card", "data-total": key, "data-value": String(totals[key] ?? 0) },
      el("div", { class: "stat-label" }, label),
      el("div", { class: "stat-card-value" }, text),
      sub ? el("div", { class: "stat-sub" }, sub) : null,
    );
  const requests = totals.requests ?? 0;
  const errorRate = requests ? `${((100 * (totals.errors ?? 0)) / requests).toFixed(1)}% of requests` : null;
  return [
    card("cost_usd", "Cost", fmtCost(totals.cost_usd ?? 0)),
    card("requests", "Requests", fmtInt(requests)),
    card("input_tokens", "Input tokens", fmtInt(totals.input_tokens ?? 0)),
    card("output_tokens", "Output tokens", fmtInt(totals.output_tokens ?? 0)),
    card("errors", "Errors", fmtInt(totals.errors ?? 0), errorRate),
  ];
}

function sortGroupRows(rows, group) {
  return [...rows].sort(
    (a, b) => (b.cost_usd ?? 0) - (a.cost_usd ?? 0) || (b.requests ?? 0) - (a.requests ?? 0) || groupLabel(groupKey(a[group])).localeCompare(groupLabel(groupKey(b[group]))),
  );
}

/**
 * Colour per series key, in stacking order: the first MAX_SERIES named groups keep their own
 * colour, the rest share "other", and unattributed usage comes last.
 */
function seriesColors(keys) {
  const colors = new Map();
  const named = keys.filter((key) => key !== NONE_KEY).slice(0, MAX_SERIES);
  named.forEach((key, i) => colors.set(key, PALETTE[i % PALETTE.length]));
  colors.set(OTHER_KEY, OTHER_COLOR);
  colors.set(NONE_KEY, NONE_COLOR);
  return colors;
}

function seriesOf(key, colors) {
  return colors.has(key) ? key : OTHER_KEY;
}

function chartCard(title, legend, chart) {
  return el("div", { class: "card chart-card" }, el("div", { class: "chart-head" }, el("h2", { class: "card-title" }, title), legend), chart);
}

/** day → (series → value), and the series present, in colour order. */
function pivotByDay(rows, group, colors, metric) {
  const matrix = new Map();
  const present = new Set();
  for (const row of rows) {
    const series = seriesOf(groupKey(row[group]), colors);
    const value = metric(row);
    if (!matrix.has(row.day)) matrix.set(row.day, new Map());
    const cell = matrix.get(row.day);
    cell.set(series, (cell.get(series) ?? 0) + value);
    if (value > 0) present.add(series);
  }
  const order = [...colors.keys()].filter((k) => present.has(k));
  return { matrix, order };
}

function axisFormatter(kind, step) {
  if (kind === "tokens") return (v) => (v === 0 ? "0" : compactFormat.format(v));
  let decimals = 0;
  while (decimals < 8 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) decimals++;
  return (v) => `$${v.toFixed(decimals)}`;
}

function valueFormatter(kind) {
  return kind === "tokens" ? fmtInt : fmtCost;
}

function drawStackedChart(container, legend, days, rows, colors, metric, kind) {
  const group = usageState.group;
  const { matrix, order } = pivotByDay(rows, group, colors, metric);
  legend.replaceChildren(
    ...order.map((key) => el("span", { class: "legend-item" }, el("span", { class: "swatch", style: { background: colors.get(key) } }), groupLabel(key))),
  );
  const width = Math.max(320, container.clientWidth || 600);
  const height = 240;
  const m = { top: 12, right: 12, bottom: 28, left: kind === "cost" ? 72 : 48 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const totals = days.map((d) => [...(matrix.get(d)?.values() ?? [])].reduce((a, b) => a + b, 0));
  const max = Math.max(...totals, 0);

  const svg = svgEl("svg", { class: "chart-svg", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": kind === "cost" ? "Cost per day" : "Tokens per day" });
  const step = niceStep(max || 1, 4);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const y = (v) => m.top + plotH - (v / top) * plotH;
  const format = axisFormatter(kind, step);

  for (let v = 0; v <= top + step / 1e6; v += step) {
    svg.append(
      svgEl("line", { class: v === 0 ? "axis-line" : "grid-line", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }),
      svgEl("text", { class: "axis-text", x: m.left - 8, y: y(v) + 4, "text-anchor": "end" }, format(v)),
    );
  }

  const band = plotW / Math.max(1, days.length);
  const barW = Math.max(2, Math.min(40, band * 0.68));
  const labelEvery = Math.max(1, Math.ceil(days.length / Math.max(1, Math.floor(plotW / 64))));
  const valueText = valueFormatter(kind);
  days.forEach((day, i) => {
    const x = m.left + i * band + (band - barW) / 2;
    let base = 0;
    for (const key of order) {
      const value = matrix.get(day)?.get(key) ?? 0;
      if (value <= 0) continue;
      const y0 = y(base);
      const y1 = y(base + value);
      svg.append(
        svgEl("rect", { class: "bar", x, y: y1, width: barW, height: Math.max(0.5, y0 - y1), fill: colors.get(key) }, svgEl("title", {}, `${day} · ${groupLabel(key)}: ${valueText(value)}`)),
      );
      base += value;
    }
    if ((days.length - 1 - i) % labelEvery === 0) {
      svg.append(svgEl("text", { class: "axis-text", x: m.left + i * band + band / 2, y: height - 8, "text-anchor": "middle" }, shortDay(day)));
    }
  });
  if (max === 0) {
    svg.append(svgEl("text", { class: "chart-empty", x: m.left + plotW / 2, y: m.top + plotH / 2, "text-anchor": "middle" }, "No usage in this range"));
  }
  container.replaceChildren(svg);
}

function shortDay(day) {
  const [, month, date] = day.split("-").map(Number);
  const names = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  return `${names[month - 1]} ${date}`;
}

function usageTable(rows, totals, group, colors, id = "usage-table") {
  const numCell = (value, text) => el("td", { class: "num", "data-value": String(value ?? 0) }, text);
  const counters = (r) => [
    numCell(r.requests, fmtInt(r.requests ?? 0)),
    numCell(r.input_tokens, fmtInt(r.input_tokens ?? 0)),
    numCell(r.output_tokens, fmtInt(r.output_tokens ?? 0)),
    el("td", { class: "num", "data-value": String(r.cost_usd ?? 0) }, fmtCost(r.cost_usd ?? 0)),
    numCell(r.errors, r.errors ? el("span", { class: "err-count" }, fmtInt(r.errors)) : "0"),
  ];
  const body = rows.map((r) => {
    const key = groupKey(r[group]);
    return el(
      "tr",
      { "data-group": r[group] ?? "" },
      el("td", {}, el("span", { class: "swatch", style: { background: colors.get(seriesOf(key, colors)) } }), el("span", { class: key === NONE_KEY ? "muted" : null }, groupLabel(key))),
      counters(r),
    );
  });
  const heading = group === "team" ? "Team" : "Model";
  return el(
    "table",
    { id, class: "table" },
    el("thead", {}, el("tr", {}, el("th", {}, heading), ["Requests", "Input tokens", "Output tokens", "Cost", "Errors"].map((h) => el("th", { class: "num" }, h)))),
    el("tbody", {}, body.length ? body : el("tr", {}, el("td", { colspan: "6", class: "empty-cell" }, "No usage recorded in this range."))),
    el("tfoot", {}, el("tr", { id: "usage-totals" }, el("td", {}, "Total"), counters(totals))),
  );
}

/* ------------------------------------------------------------------ boot */

window.addEventListener("hashchange", route);
route();
