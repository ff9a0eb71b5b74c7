/**
 * One JSON request with a timeout, shared by the token exchange and the alerts API.
 * Resolves to {status, body}; body is null unless the answer is a JSON object (an HTML error
 * page or the SPA fallback still has a usable status). Rejects with Error('timed out') or the
 * network error.
 */
export async function fetchJson(path, { method = 'GET', headers = {}, payload, timeoutMs }) {
  const ctrl = new AbortController();
  const t = setTimeout(() => ctrl.abort(), timeoutMs);
  const all = { Accept: 'application/json', ...headers };
  if (payload !== undefined) all['Content-Type'] = 'application/json';
  try {
    const resp = await fetch(path, {
      method,
      headers: all,
      body: payload === undefined ? undefined : JSON.stringify(payload),
      cache: 'no-store',
      signal: ctrl.signal,
    });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      // Not JSON: the status still says something.
    }
    return { status: resp.status, body: body && typeof body === 'object' ? body : null };
  } catch (e) {
    if (e.name === 'AbortError') throw new Error('timed out');
    throw e;
  } finally {
    clearTimeout(t);
  }
}
