// moonwire price alerts panel. GET /api/me says what the key may do; GET/POST/DELETE
// /api/alerts list, create and delete the user's alerts; the socket's {"type":"alert"} frame
// (handed in by app.js) says that one fired. app.js owns the connection and gives this module
// a token source; nothing here touches the socket. Plain ES module, no dependencies.

import { fetchJson } from './fetch_json.js';

const API_TIMEOUT_MS = 10000;
const TOAST_MS = 12000;
const FLASH_MS = 2500;
const MAX_ALERTS = 200; // a misbehaving server must not grow the DOM without bound
const DIRECTIONS = ['above', 'below'];

const $ = (id) => document.getElementById(id);
const finite = (v) => typeof v === 'number' && Number.isFinite(v);
const el = {
  panel: $('alerts'),
  note: $('alert-note'),
  error: $('alert-error'),
  form: $('alert-form'),
  fields: $('alert-fields'),
  symbol: $('alert-symbol'),
  direction: $('alert-direction'),
  price: $('alert-price'),
  create: $('alert-create'),
  list: $('alert-list'),
  toast: $('alert-toast'),
  toastText: $('alert-toast-text'),
  toastClose: $('alert-toast-close'),
};

const NOTES = {
  readonly: 'This API key is read-only: its alerts are listed here, but it cannot create or delete them.',
  offline: 'Disconnected — connect to manage alerts.',
  error: 'Alerts could not be loaded.',
};

const state = {
  mode: 'hidden', // hidden | unavailable | error | trade | readonly | offline
  session: 0, // bumped on sign-in/out: answers to an older session are dropped
  getToken: null, // async (force) => token | null, from app.js
  canTrade: false,
  busy: false, // a create is in flight
  listGen: 0, // bumped on every list load and mutation: older list answers are dropped
  alerts: new Map(), // id -> alert
  fired: new Map(), // id -> the fired frame; the socket may be ahead of GET /api/alerts
  flashUntil: new Map(), // id -> performance.now() until which its row is highlighted
  toastTimer: 0,
  errorFromList: false, // the error shown came from loading the list (a later load clears it)
};

// Test hook (app.js exposes it as window.__ticker.alerts; the page never reads it back).
const hook = { mode: 'hidden', canTrade: false, count: 0, lastCreatedId: null, firedFrames: {}, toasts: 0, error: null };

let prices = {}; // symbol -> latest price (app.js's live map)
let fmtPrice = (p) => String(p);

/** Wires the panel; `opts.prices` is a live symbol → price map, `opts.fmtPrice` a formatter. */
export function init(opts) {
  prices = opts.prices;
  fmtPrice = opts.fmtPrice;
  el.form.addEventListener('submit', onCreate);
  el.symbol.addEventListener('change', prefillPrice);
  el.list.addEventListener('click', onListClick);
  el.toastClose.addEventListener('click', hideToast);
  return hook;
}

// ---------------------------------------------------------------------------------------
// Lifecycle, called by app.js

/** A new Connect: forget the previous key's alerts. */
export function reset() {
  state.session += 1;
  state.getToken = null;
  state.alerts.clear();
  state.fired.clear();
  state.canTrade = false;
  state.busy = false;
  showError(null);
  setMode('hidden');
  render();
}

/** A token was obtained: ask what the key may do, then load its alerts. */
export async function signedIn(getToken) {
  state.getToken = getToken;
  state.busy = false;
  const session = (state.session += 1);
  const res = await api('GET', '/api/me');
  if (session !== state.session) return;
  // No JSON at all (404, or the static SPA fallback answering with the page): this server
  // has no alerts API, so the panel stays out of the way.
  if (res.body === null && (res.status === 200 || res.status === 404)) return setMode('unavailable');
  if (res.status !== 200 || !res.body) {
    setMode('error');
    return showError(describe(res));
  }
  const perms = Array.isArray(res.body.permissions) ? res.body.permissions : [];
  state.canTrade = perms.includes('trade');
  setMode(state.canTrade ? 'trade' : 'readonly');
  await loadList();
}

/** The socket is live again after a drop: frames may have been missed, so reload the list
 * (or retry GET /api/me if that failed). */
export function refresh() {
  if (state.mode === 'trade' || state.mode === 'readonly') loadList();
  else if (state.mode === 'error' && state.getToken) signedIn(state.getToken);
}

/** Disconnect: keep the list on screen, but nothing can be changed until the next Connect. */
export function signedOut() {
  state.session += 1;
  state.getToken = null;
  state.busy = false;
  if (state.mode === 'trade' || state.mode === 'readonly' || state.mode === 'error') setMode('offline');
}

/** A symbol appeared in the ticker: offer it in the form (sorted, like the price table). */
export function addSymbol(symbol) {
  const opts = [...el.symbol.options];
  if (opts.some((o) => o.value === symbol)) return;
  const opt = new Option(symbol, symbol);
  el.symbol.insertBefore(opt, opts.find((o) => o.value > symbol) || null);
  if (opts.length === 0) el.symbol.value = symbol;
  updateForm();
}

/** Prefills the price with the symbol's current price once the first tick for it is in. */
export function priceSeen(symbol) {
  if (el.price.value === '' && el.symbol.value === symbol) prefillPrice();
}

/** The server's {"type":"alert","alert":{...}} frame. */
export function fired(a) {
  const id = Number(a?.id);
  if (!a || !Number.isFinite(id)) return;
  hook.firedFrames[id] = (hook.firedFrames[id] || 0) + 1;
  state.fired.set(id, a);
  if (state.fired.size > MAX_ALERTS) state.fired.delete(state.fired.keys().next().value);
  const merged = { ...state.alerts.get(id), ...a, id, status: 'fired' };
  upsert(merged);
  flashRow(id);
  render();
  showToast(merged);
  refresh();
}

// ---------------------------------------------------------------------------------------
// API

/** One JSON call with the session's token; a 401 is retried once with a fresh token. */
async function api(method, path, payload) {
  let res = { status: 0, body: null, problem: 'not signed in' };
  for (const force of [false, true]) {
    const token = state.getToken ? await state.getToken(force) : null;
    if (!token) return res;
    res = await send(method, path, payload, token);
    if (res.status !== 401) return res;
  }
  return res;
}

async function send(method, path, payload, token) {
  try {
    return await fetchJson(path, {
      method,
      headers: { Authorization: `Bearer ${token}` },
      payload,
      timeoutMs: API_TIMEOUT_MS,
    });
  } catch (e) {
    return { status: 0, body: null, problem: e.message || String(e) };
  }
}

/** A failed call as one line for the user: the server's words, the status, and its ref_id. */
function describe(res) {
  if (res.status === 0) return `Request failed: ${res.problem || 'network error'}`;
  const what = typeof res.body?.error === 'string' && res.body.error ? res.body.error : 'request failed';
  const ref = res.body?.ref_id != null ? ` · ref ${res.body.ref_id}` : '';
  return `${what} (HTTP ${res.status})${ref}`;
}

// ---------------------------------------------------------------------------------------
// Actions

async function loadList() {
  const session = state.session;
  const gen = (state.listGen += 1);
  const res = await api('GET', '/api/alerts');
  if (session !== state.session || gen !== state.listGen) return;
  if (res.status !== 200 || !Array.isArray(res.body?.alerts)) return showError(describe(res), true);
  if (state.errorFromList) showError(null);
  state.alerts.clear();
  for (const a of res.body.alerts.slice(0, MAX_ALERTS)) upsert(a);
  render();
}

async function onCreate(e) {
  e.preventDefault();
  if (state.mode !== 'trade' || state.busy) return;
  const symbol = el.symbol.value;
  const direction = DIRECTIONS.includes(el.direction.value) ? el.direction.value : 'above';
  const price = Number(el.price.value);
  if (!symbol) return showError('Wait for prices to pick a symbol.');
  if (el.price.value.trim() === '' || !Number.isFinite(price) || price <= 0) {
    el.price.focus();
    return showError('Enter a price above 0.');
  }
  const session = state.session;
  state.busy = true;
  updateForm();
  const res = await api('POST', '/api/alerts', { symbol, [direction]: price });
  if (session !== state.session) return;
  state.busy = false;
  updateForm();
  const alert = res.body?.alert;
  if ((res.status !== 201 && res.status !== 200) || !alert || !Number.isFinite(Number(alert.id))) {
    return showError(describe(res));
  }
  state.listGen += 1; // a list load that started before this create would drop it
  upsert(alert);
  hook.lastCreatedId = Number(alert.id);
  showError(null);
  render();
  prefillPrice();
}

async function onDelete(id, button) {
  if (state.mode !== 'trade') return;
  const session = state.session;
  button.disabled = true;
  const res = await api('DELETE', `/api/alerts/${encodeURIComponent(id)}`);
  if (session !== state.session) return;
  // 404: already gone (deleted elsewhere), which is what the user wanted.
  if (res.status !== 200 && res.status !== 204 && res.status !== 404) {
    button.disabled = false;
    return showError(describe(res));
  }
  state.listGen += 1;
  state.alerts.delete(id);
  showError(null);
  render();
}

function onListClick(e) {
  const button = e.target.closest('button.alert-delete');
  if (button && !button.disabled) onDelete(Number(button.dataset.alertId), button);
}

// ---------------------------------------------------------------------------------------
// State and rendering

/** Adds or updates one alert; status only moves forward (a fired alert never reopens). */
function upsert(a) {
  const id = Number(a?.id);
  if (!Number.isFinite(id)) return;
  const frame = state.fired.get(id);
  const merged = { ...state.alerts.get(id), ...a, id };
  if (frame) {
    merged.status = 'fired';
    merged.fired_price ??= frame.fired_price;
    merged.fired_at ??= frame.fired_at;
  }
  if (!state.alerts.has(id) && state.alerts.size >= MAX_ALERTS) return;
  state.alerts.set(id, merged);
}

function setMode(mode) {
  state.mode = mode;
  hook.mode = mode;
  hook.canTrade = state.canTrade;
  el.panel.hidden = mode === 'hidden' || mode === 'unavailable';
  el.panel.dataset.mode = mode;
  el.form.hidden = !(mode === 'trade' || (mode === 'offline' && state.canTrade));
  el.note.hidden = !NOTES[mode];
  el.note.textContent = NOTES[mode] || '';
  updateForm();
  render();
}

function updateForm() {
  const usable = state.mode === 'trade' && !state.busy;
  el.fields.disabled = !usable;
  el.create.disabled = !usable || el.symbol.options.length === 0;
  el.create.textContent = state.busy ? 'Creating…' : 'Create alert';
}

function prefillPrice() {
  const p = prices[el.symbol.value];
  if (Number.isFinite(p)) el.price.value = String(p);
}

/** Shows `message` in the panel (null clears it). */
function showError(message, fromList = false) {
  state.errorFromList = Boolean(message) && fromList;
  hook.error = message;
  el.error.hidden = !message;
  el.error.textContent = message || '';
}

function render() {
  const items = [...state.alerts.values()].sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0) || b.id - a.id);
  hook.count = items.length;
  const canDelete = state.mode === 'trade';
  const showDelete = canDelete || (state.mode === 'offline' && state.canTrade);
  if (items.length === 0) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'No alerts yet.';
    el.list.replaceChildren(li);
    return;
  }
  el.list.replaceChildren(...items.map((a) => alertRow(a, showDelete, canDelete)));
}

function describeAlert(a) {
  const price = finite(a.price) ? fmtPrice(a.price) : '?';
  return `${a.symbol ?? '?'} ${a.direction === 'below' ? 'below' : 'above'} ${price}`;
}

function alertRow(a, showDelete, canDelete) {
  const status = a.status === 'fired' ? 'fired' : 'open';
  const li = document.createElement('li');
  li.className = 'alert-item';
  li.dataset.alertId = String(a.id);
  li.dataset.status = status;

  const desc = document.createElement('span');
  desc.className = 'alert-desc';
  desc.textContent = describeAlert(a);

  const badge = document.createElement('span');
  badge.className = 'alert-status';
  badge.dataset.status = status;
  badge.textContent = status;

  const detail = document.createElement('span');
  detail.className = 'alert-detail';
  detail.textContent = firedDetail(a);

  li.append(desc, badge, detail);
  if (showDelete) {
    const del = document.createElement('button');
    del.type = 'button';
    del.className = 'alert-delete ghost';
    del.dataset.alertId = String(a.id);
    del.textContent = 'Delete';
    del.disabled = !canDelete;
    del.setAttribute('aria-label', `Delete alert ${describeAlert(a)}`);
    li.append(del);
  }
  if (performance.now() < (state.flashUntil.get(a.id) ?? 0)) li.classList.add('just-fired');
  return li;
}

function firedDetail(a) {
  if (a.status !== 'fired') return '';
  const at = finite(a.fired_price) ? ` at ${fmtPrice(a.fired_price)}` : '';
  const when = timeOf(a.fired_at);
  return `${at}${when ? ` · ${when}` : ''}`.trim();
}

/** Unix seconds or milliseconds → local time of day. */
function timeOf(t) {
  return finite(t) ? new Date(t < 1e12 ? t * 1000 : t).toLocaleTimeString() : '';
}

/** Highlights a row for a moment; render() keeps the highlight across list rebuilds. */
function flashRow(id) {
  state.flashUntil.set(id, performance.now() + FLASH_MS);
  setTimeout(() => {
    state.flashUntil.delete(id);
    el.list.querySelector(`[data-alert-id="${id}"]`)?.classList.remove('just-fired');
  }, FLASH_MS);
}

function showToast(a) {
  const now = finite(a.fired_price) ? ` — now ${fmtPrice(a.fired_price)}` : '';
  el.toastText.textContent = `Alert fired: ${describeAlert(a)}${now}`;
  el.toast.dataset.alertId = String(a.id);
  el.toast.hidden = false;
  hook.toasts += 1;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(hideToast, TOAST_MS);
}

function hideToast() {
  clearTimeout(state.toastTimer);
  el.toast.hidden = true;
}
