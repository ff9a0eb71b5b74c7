// moonwire ticker page: API key → POST /auth/token → WebSocket /ws/ticker, then a live
// table and one canvas chart per symbol, and the price alerts panel (alerts.js). Plain ES
// modules, no build step, no dependencies.
//
// Ticks arrive every 10 ms, faster than the screen refreshes, so incoming messages only
// update plain data and mark it dirty; the DOM and the canvases are touched at most once
// per animation frame.

import * as alerts from './alerts.js';
import { fetchJson } from './fetch_json.js';

const MAX_POINTS = 300; // points kept per chart
const MAX_SYMBOLS = 64; // a misbehaving server must not grow the DOM without bound
const PING_EVERY_MS = 2000;
const PING_LOST_MS = 6000; // an unanswered ping older than this is given up on
const STALE_MS = 8000; // no frame at all for this long ⇒ the socket is dead even if not closed
const OPEN_TIMEOUT_MS = 10000;
const TOKEN_TIMEOUT_MS = 10000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STABLE_MS = 5000; // a connection that lived this long resets the backoff
const TOKEN_SLACK_MS = 60000; // refresh a token this long before it expires
const FLASH_EVERY_MS = 700; // at 100 updates/s a flash per tick would be a permanent colour
const KEY_STORAGE = 'moonwire.apiKey';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  statusText: $('status-text'),
  form: $('connect-form'),
  key: $('api-key'),
  toggleKey: $('toggle-key'),
  connect: $('connect'),
  disconnect: $('disconnect'),
  userId: $('user-id'),
  rtt: $('rtt'),
  rate: $('rate'),
  rows: $('price-rows'),
  charts: $('charts'),
};

// Test hook (read-only for tests; the page never reads it back, so it cannot change behaviour).
const hook = {
  state: 'idle', // idle | connecting | live | reconnecting | error
  ticks: 0, // ticker messages received since the page loaded
  prices: {}, // symbol -> latest price
  chartPoints: {}, // symbol -> points currently held by its chart
  rtt: null, // last ping round trip in ms
  userId: null,
  error: null, // last error / close reason shown to the user
  reconnects: 0,
  tokens: 0, // successful token exchanges
  frames: 0, // animation frames that redrew something
  alerts: null, // the alerts panel's own hook (alerts.js)
};
window.__ticker = hook;

const priceFmt = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const smallFmt = new Intl.NumberFormat('en-US', { maximumSignificantDigits: 6 });
const pctFmt = new Intl.NumberFormat('en-US', { minimumFractionDigits: 3, maximumFractionDigits: 3 });
const fmtPrice = (p) => (Math.abs(p) >= 1 ? priceFmt : smallFmt).format(p);
// One sign style for both columns: a true minus (U+2212) lines up with '+' in tabular digits.
const sign = (d) => (d > 0 ? '+' : d < 0 ? '−' : '');
// A change that rounds to zero shows no sign ("0.000%", not "−0.000%").
const fmtSigned = (d, ref) => sign(Math.abs(ref) >= 1 && Math.abs(d) < 0.005 ? 0 : d) + fmtPrice(Math.abs(d));
const fmtPct = (p) => `${sign(Math.abs(p) < 0.0005 ? 0 : p)}${pctFmt.format(Math.abs(p))}%`;

hook.alerts = alerts.init({ prices: hook.prices, fmtPrice });

// ---------------------------------------------------------------------------------------
// Per-symbol state, rows and charts

/** @type {Map<string, any>} */
const symbols = new Map();
let colors = readColors();

function readColors() {
  const css = getComputedStyle(document.documentElement);
  const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    up: v('--up', '#0f9d58'),
    down: v('--down', '#d93025'),
    grid: v('--grid', 'rgba(0,0,0,0.08)'),
    muted: v('--muted', '#5b6678'),
    font: `11px ${getComputedStyle(document.body).fontFamily}`,
  };
}

function getSymbol(symbol) {
  let s = symbols.get(symbol);
  if (s || symbols.size >= MAX_SYMBOLS) return s;

  const row = document.createElement('tr');
  row.dataset.symbol = symbol;
  const cell = (cls) => {
    const td = document.createElement('td');
    td.className = cls;
    row.append(td);
    return td;
  };
  const symCell = document.createElement('th');
  symCell.scope = 'row';
  symCell.className = 'sym';
  symCell.textContent = symbol;
  row.append(symCell);
  s = {
    symbol,
    price: null,
    base: null, // first price after the user pressed Connect
    series: [],
    dirty: true,
    flashAt: -Infinity,
    flashPrice: null,
    dir: '',
    row,
    priceCell: cell('num price'),
    changeCell: cell('num change'),
    pctCell: cell('num pct'),
  };

  const fig = document.createElement('figure');
  fig.className = 'chart';
  const cap = document.createElement('figcaption');
  const name = document.createElement('b');
  name.textContent = symbol;
  s.capValue = document.createElement('span');
  cap.append(name, s.capValue);
  const canvas = document.createElement('canvas');
  canvas.dataset.symbol = symbol;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', `${symbol} price chart, last ${MAX_POINTS} updates`);
  fig.append(cap, canvas);
  s.fig = fig;
  s.canvas = canvas;
  s.ctx = canvas.getContext('2d');
  s.w = 0;
  s.h = 0;
  s.dpr = 1;

  // Keep rows and charts sorted: the server's symbol order is not stable (Lua pairs()).
  const after = [...symbols.values()].find((o) => o.symbol > symbol);
  ui.rows.querySelector('tr.empty')?.remove();
  $('charts-empty')?.remove();
  ui.rows.insertBefore(row, after ? after.row : null);
  ui.charts.insertBefore(fig, after ? after.fig : null);
  symbols.set(symbol, s);
  resizer.observe(canvas);
  alerts.addSymbol(symbol);
  return s;
}

// Canvas backing stores follow CSS size × devicePixelRatio so lines stay crisp on HiDPI.
const resizer = new ResizeObserver((entries) => {
  for (const e of entries) {
    const s = symbols.get(e.target.dataset.symbol);
    if (s) sizeCanvas(s, e.contentRect.width, e.contentRect.height);
  }
  scheduleFrame();
});

function sizeCanvas(s, w, h) {
  const dpr = window.devicePixelRatio || 1;
  s.w = w;
  s.h = h;
  s.dpr = dpr;
  const bw = Math.max(1, Math.round(w * dpr));
  const bh = Math.max(1, Math.round(h * dpr));
  if (s.canvas.width !== bw) s.canvas.width = bw;
  if (s.canvas.height !== bh) s.canvas.height = bh;
  s.dirty = true;
}

// devicePixelRatio changes (zoom, moving to another screen) do not always resize the box.
function watchDpr() {
  const mq = matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
  mq.addEventListener('change', () => {
    for (const s of symbols.values()) sizeCanvas(s, s.w, s.h);
    scheduleFrame();
    watchDpr();
  }, { once: true });
}
watchDpr();

matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  colors = readColors();
  for (const s of symbols.values()) s.dirty = true;
  scheduleFrame();
});

function resetSeries() {
  for (const s of symbols.values()) {
    s.base = null;
    s.series.length = 0;
    s.flashPrice = null;
    s.dirty = true;
    hook.chartPoints[s.symbol] = 0;
  }
  scheduleFrame();
}

function applyTicker(data) {
  if (!Array.isArray(data)) return;
  let any = false;
  for (const item of data) {
    if (!item || typeof item.symbol !== 'string' || !Number.isFinite(item.price)) continue;
    const s = getSymbol(item.symbol);
    if (!s) continue;
    s.price = item.price;
    s.series.push(item.price);
    if (s.series.length > MAX_POINTS) s.series.splice(0, s.series.length - MAX_POINTS);
    s.dirty = true;
    hook.prices[s.symbol] = item.price;
    if (s.base === null) {
      s.base = item.price;
      alerts.priceSeen(s.symbol);
    }
    hook.chartPoints[s.symbol] = s.series.length;
    any = true;
  }
  if (any) {
    hook.ticks += 1;
    rate.count += 1;
    scheduleFrame();
  }
}

// ---------------------------------------------------------------------------------------
// Rendering, coalesced to one pass per animation frame

let framePending = false;
function scheduleFrame() {
  if (framePending) return;
  framePending = true;
  requestAnimationFrame(frame);
}

function frame(now) {
  framePending = false;
  let drew = false;
  for (const s of symbols.values()) {
    if (!s.dirty) continue;
    s.dirty = false;
    updateRow(s, now);
    drawChart(s);
    drew = true;
  }
  if (drew) hook.frames += 1;
}

function updateRow(s, now) {
  if (s.price === null) return;
  const priceText = fmtPrice(s.price);
  if (s.priceCell.textContent !== priceText) s.priceCell.textContent = priceText;

  if (s.flashPrice === null) {
    s.flashPrice = s.price;
    s.flashAt = now;
  } else if (now - s.flashAt >= FLASH_EVERY_MS && s.price !== s.flashPrice) {
    const dir = s.price > s.flashPrice ? 'up' : 'down';
    s.flashPrice = s.price;
    s.flashAt = now;
    s.dir = dir;
    const cls = `flash-${dir}`;
    s.priceCell.classList.remove('flash-up', 'flash-down', 'up', 'down');
    s.priceCell.classList.add(cls, dir);
    // Dropping the class lets the CSS transition fade the background out.
    setTimeout(() => s.priceCell.classList.remove(cls), 120);
  }

  const diff = s.price - s.base;
  const pct = s.base ? (diff / s.base) * 100 : 0;
  const dirCls = diff > 0 ? 'up' : diff < 0 ? 'down' : '';
  const changeText = fmtSigned(diff, s.price);
  const pctText = fmtPct(pct);
  if (s.changeCell.textContent !== changeText) s.changeCell.textContent = changeText;
  if (s.pctCell.textContent !== pctText) s.pctCell.textContent = pctText;
  for (const c of [s.changeCell, s.pctCell]) {
    if (c.dataset.dir !== dirCls) {
      c.dataset.dir = dirCls;
      c.classList.toggle('up', dirCls === 'up');
      c.classList.toggle('down', dirCls === 'down');
    }
  }
  s.capValue.textContent = `${priceText} · ${pctText}`;
  s.capValue.className = dirCls;
}

function drawChart(s) {
  const { ctx, w, h, dpr, series } = s;
  if (!w || !h) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const n = series.length;
  if (n === 0) return;

  let min = Infinity;
  let max = -Infinity;
  for (const p of series) {
    if (p < min) min = p;
    if (p > max) max = p;
  }
  if (max - min < 1e-9) {
    // A flat line still needs a visible range.
    const pad = Math.abs(max) * 1e-4 || 1;
    min -= pad;
    max += pad;
  }
  const top = 14;
  const bottom = h - 14;
  const left = 2;
  const right = w - 6;
  const step = (right - left) / (MAX_POINTS - 1);
  const y = (p) => bottom - ((p - min) / (max - min)) * (bottom - top);
  // Newest point sits at the right edge; history scrolls left.
  const x = (i) => right - (n - 1 - i) * step;

  ctx.lineWidth = 1;
  ctx.strokeStyle = colors.grid;
  ctx.beginPath();
  for (let g = 0; g <= 2; g++) {
    const gy = Math.round(top + ((bottom - top) * g) / 2) + 0.5;
    ctx.moveTo(0, gy);
    ctx.lineTo(w, gy);
  }
  ctx.stroke();

  const rising = series[n - 1] >= series[0];
  const color = rising ? colors.up : colors.down;

  ctx.beginPath();
  ctx.moveTo(x(0), y(series[0]));
  for (let i = 1; i < n; i++) ctx.lineTo(x(i), y(series[i]));
  if (n === 1) ctx.lineTo(x(0) - 1, y(series[0]));

  ctx.lineJoin = 'round';
  ctx.lineWidth = 1.75;
  ctx.strokeStyle = color;
  ctx.stroke();

  // Soft area fill under the line.
  ctx.lineTo(x(n - 1), bottom);
  ctx.lineTo(x(0), bottom);
  ctx.closePath();
  const grad = ctx.createLinearGradient(0, top, 0, bottom);
  grad.addColorStop(0, rising ? 'rgba(15,157,88,0.22)' : 'rgba(217,48,37,0.22)');
  grad.addColorStop(1, 'rgba(0,0,0,0)');
  ctx.fillStyle = grad;
  ctx.fill();

  ctx.beginPath();
  ctx.arc(x(n - 1), y(series[n - 1]), 3, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();

  ctx.font = colors.font;
  ctx.fillStyle = colors.muted;
  ctx.textBaseline = 'top';
  ctx.fillText(fmtPrice(max), 4, 0);
  ctx.textBaseline = 'bottom';
  ctx.fillText(fmtPrice(min), 4, h);
}

document.addEventListener('visibilitychange', () => {
  // rAF does not run in hidden tabs; catch up once the tab is visible again.
  if (!document.hidden) scheduleFrame();
});

// ---------------------------------------------------------------------------------------
// Connection: token exchange, socket, ping, reconnect with backoff

const rate = { count: 0, since: performance.now() };

/** The active connection run (one per press of Connect), or null. */
let run = null;

function setState(state, text) {
  hook.state = state;
  ui.status.dataset.state = state;
  if (ui.statusText.textContent !== text) {
    ui.statusText.textContent = text;
    ui.status.title = text; // the pill ellipsizes long reasons on narrow screens
  }
  const active = state === 'connecting' || state === 'live' || state === 'reconnecting';
  ui.connect.disabled = active;
  ui.disconnect.disabled = !active;
}

function backoff(attempt) {
  const exp = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  // "Equal jitter": never 0 (no hot loop), and clients that lost the server together spread out.
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

function connect(apiKey) {
  stop();
  resetSeries();
  alerts.reset();
  hook.error = null;
  run = {
    key: apiKey,
    token: null,
    tokenExpiresAt: 0,
    attempt: 0,
    ws: null,
    timers: new Set(),
    retryAt: 0,
    pingSentAt: null,
    lastFrameAt: 0,
    live: false,
    stopped: false,
    beenLive: false,
  };
  const r = run;
  r.uiTimer = setInterval(() => refreshMeta(r), 250);
  attempt(r);
}

function stop() {
  const r = run;
  run = null;
  if (!r) return;
  r.stopped = true;
  clearInterval(r.uiTimer);
  for (const t of r.timers) clearTimeout(t);
  r.timers.clear();
  dropSocket(r, 1000, 'client disconnect');
  alerts.signedOut();
}

function later(r, ms, fn) {
  const t = setTimeout(() => {
    r.timers.delete(t);
    if (!r.stopped) fn();
  }, ms);
  r.timers.add(t);
  return t;
}

function fail(r, message) {
  hook.error = message;
  stop();
  setState('error', message);
  ui.key.focus();
}

function scheduleRetry(r, reason) {
  if (r.stopped) return;
  hook.error = reason;
  hook.reconnects += 1;
  r.live = false;
  const delay = backoff(r.attempt);
  r.attempt += 1;
  r.retryAt = performance.now() + delay;
  r.retryReason = reason;
  refreshMeta(r);
  r.retryTimer = later(r, delay, () => {
    r.retryAt = 0;
    attempt(r);
  });
}

async function attempt(r) {
  setState(r.attempt === 0 ? 'connecting' : 'reconnecting', r.attempt === 0 ? 'Connecting…' : 'Reconnecting…');
  if (!r.token || Date.now() > r.tokenExpiresAt - TOKEN_SLACK_MS) {
    r.token = null;
    let res;
    try {
      res = await fetchToken(r.key);
    } catch (e) {
      if (!r.stopped) scheduleRetry(r, `token request failed: ${e.message || e}`);
      return;
    }
    if (r.stopped) return;
    if (res.status === 401) return fail(r, 'invalid API key');
    if (res.status === 400) return fail(r, res.body?.error || 'bad request');
    if (res.status !== 200 || typeof res.body?.token !== 'string') {
      scheduleRetry(r, `token exchange failed (HTTP ${res.status})`);
      return;
    }
    keepToken(r, res.body);
    try {
      localStorage.setItem(KEY_STORAGE, r.key);
    } catch {
      // Private mode or storage disabled: remembering the key is a convenience only.
    }
    alerts.signedIn((force) => apiToken(r, force));
  }
  openSocket(r);
}

function keepToken(r, body) {
  r.token = body.token;
  const ttl = Number(body.expires_in) > 0 ? Number(body.expires_in) : 3600;
  r.tokenExpiresAt = Date.now() + ttl * 1000;
  hook.tokens += 1;
}

/**
 * A token for /api calls (alerts.js): the connection's own while it is fresh, else a new
 * exchange (also when `force`: the API answered 401). null once the run is stopped.
 */
async function apiToken(r, force) {
  if (r.stopped) return null;
  if (!force && r.token && Date.now() < r.tokenExpiresAt - TOKEN_SLACK_MS) return r.token;
  let res;
  try {
    res = await fetchToken(r.key);
  } catch {
    return null;
  }
  if (r.stopped || res.status !== 200 || typeof res.body?.token !== 'string') return null;
  keepToken(r, res.body);
  return r.token;
}

function fetchToken(apiKey) {
  return fetchJson('/auth/token', {
    method: 'POST',
    payload: { api_key: apiKey },
    timeoutMs: TOKEN_TIMEOUT_MS,
  });
}

function socketUrl(token) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws/ticker?x-auth-token=${encodeURIComponent(token)}`;
}

function openSocket(r) {
  let ws;
  try {
    ws = new WebSocket(socketUrl(r.token));
  } catch (e) {
    scheduleRetry(r, `cannot open socket: ${e.message || e}`);
    return;
  }
  r.ws = ws;
  r.opened = false;
  r.openedAt = 0;
  r.pingSentAt = null;

  const openTimer = later(r, OPEN_TIMEOUT_MS, () => {
    if (r.ws === ws && !r.opened) lost(r, ws, false, 'connect timed out');
  });

  ws.onopen = () => {
    if (r.ws !== ws) return;
    clearTimeout(openTimer);
    r.timers.delete(openTimer);
    r.opened = true;
    r.openedAt = performance.now();
    r.lastFrameAt = r.openedAt;
    sendPing(r);
    r.pingTimer = setInterval(() => heartbeat(r, ws), PING_EVERY_MS);
  };
  ws.onmessage = (ev) => {
    if (r.ws === ws) onMessage(r, ev.data);
  };
  ws.onerror = () => {
    // The close event that always follows carries the details.
  };
  ws.onclose = (ev) => {
    if (r.ws !== ws) return;
    const why = ev.reason ? `${ev.reason}, ${ev.code}` : `${ev.code}`;
    lost(r, ws, r.opened, r.opened ? `connection lost (${why})` : 'connection refused', ev.code);
  };
}

/** The socket is gone (or given up on): decide about the token, then back off and retry. */
function lost(r, ws, opened, reason, code) {
  dropSocket(r, 4000, 'reconnecting');
  if (r.stopped) return;
  // A browser cannot see the HTTP status of a failed upgrade, so a close before open is
  // treated like a rejected token; 4401/1008 are explicit auth closes.
  if (!opened || code === 4401 || code === 1008) r.token = null;
  if (opened && performance.now() - r.openedAt >= STABLE_MS) r.attempt = 0;
  scheduleRetry(r, reason);
}

function dropSocket(r, code, reason) {
  clearInterval(r.pingTimer);
  const ws = r.ws;
  r.ws = null;
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  try {
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
  } catch {
    // Already closing.
  }
}

function sendPing(r) {
  if (!r.ws || r.ws.readyState !== WebSocket.OPEN) return;
  r.pingSentAt = performance.now();
  r.ws.send(JSON.stringify({ type: 'ping' }));
}

function heartbeat(r, ws) {
  if (r.ws !== ws) return;
  const now = performance.now();
  if (now - r.lastFrameAt > STALE_MS) {
    lost(r, ws, true, 'no data from server');
    return;
  }
  // Pong carries no id, so keep one ping in flight and time that one.
  if (r.pingSentAt === null || now - r.pingSentAt > PING_LOST_MS) sendPing(r);
}

function onMessage(r, data) {
  r.lastFrameAt = performance.now();
  if (typeof data !== 'string') return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  switch (msg.type) {
    case 'welcome':
      hook.userId = typeof msg.user_id === 'string' ? msg.user_id : null;
      ui.userId.textContent = hook.userId || '—';
      markLive(r);
      break;
    case 'ticker':
      markLive(r);
      applyTicker(msg.data);
      break;
    case 'pong':
      if (r.pingSentAt !== null) {
        hook.rtt = Math.round((performance.now() - r.pingSentAt) * 10) / 10;
        r.pingSentAt = null;
        ui.rtt.textContent = `${hook.rtt < 10 ? hook.rtt.toFixed(1) : Math.round(hook.rtt)} ms`;
      }
      break;
    case 'alert':
      alerts.fired(msg.alert);
      break;
    default:
      break;
  }
}

function markLive(r) {
  if (r.live) return;
  r.live = true;
  hook.error = null;
  setState('live', 'Live');
  // Alert frames sent while the socket was down are lost: reload the list after a drop.
  if (r.beenLive) alerts.refresh();
  r.beenLive = true;
}

function refreshMeta(r) {
  if (r.stopped) return;
  const now = performance.now();
  if (r.retryAt) {
    const secs = Math.max(1, Math.ceil((r.retryAt - now) / 1000));
    setState('reconnecting', `Reconnecting in ${secs}s — ${r.retryReason}`);
  }
  if (now - rate.since >= 1000) {
    const perSec = Math.round((rate.count * 1000) / (now - rate.since));
    rate.count = 0;
    rate.since = now;
    ui.rate.textContent = r.live ? String(perSec) : '—';
  }
}

// ---------------------------------------------------------------------------------------
// Controls

try {
  ui.key.value = localStorage.getItem(KEY_STORAGE) || '';
} catch {
  // Storage unavailable; the user pastes the key each time.
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  const key = ui.key.value.trim();
  if (!key) {
    setState('error', 'enter an API key');
    ui.key.focus();
    return;
  }
  connect(key);
});

ui.disconnect.addEventListener('click', () => {
  stop();
  setState('idle', 'Disconnected');
  ui.rate.textContent = '—';
});

ui.toggleKey.addEventListener('click', () => {
  const show = ui.key.type === 'password';
  ui.key.type = show ? 'text' : 'password';
  ui.toggleKey.textContent = show ? 'Hide' : 'Show';
  ui.toggleKey.setAttribute('aria-pressed', String(show));
});

window.addEventListener('online', () => {
  // Back online: skip the rest of the backoff wait.
  const r = run;
  if (r && r.retryAt && !r.ws) {
    clearTimeout(r.retryTimer);
    r.timers.delete(r.retryTimer);
    r.retryAt = 0;
    attempt(r);
  }
});

window.addEventListener('pagehide', () => {
  // Close cleanly so the server's handler sees ws.leave at once.
  if (run) dropSocket(run, 1000, 'page closed');
});
