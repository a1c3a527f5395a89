// What every page uses, at the bottom of the UI's modules: the API client (session cookie + CSRF
// token), small DOM helpers, and the registries the shell (app.js) reads: routes, the current
// page's event listeners and leave hooks. Pages (pages.js, deployments.js, admin.js, logs.js)
// import from here, never from app.js; app.js imports them all and starts the UI.

export const state = { user: null, role: null, csrf: null };

export function canChange() { return state.role === "operator" || state.role === "admin"; }

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status; this.body = body || {};
  }
}

// One call to the API. Changes carry the session's CSRF token; errors throw ApiError with the
// API's one error body ({error, message, field}).
export async function api(method, path, body) {
  const headers = { "accept": "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = state.csrf || "";
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path.startsWith("/") ? path : `/api/v2/${path}`, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  let out = null;
  const text = await r.text();
  try { out = text ? JSON.parse(text) : null; } catch (e) { out = { message: text }; }
  if (r.status === 401 && state.user) { state.user = null; signedOut(); }
  if (!r.ok) throw new ApiError(r.status, out);
  return out;
}
export const get = (path) => api("GET", path);

// h("a", {href: "#/"}, "text", child...): elements built from data, never HTML strings.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const badge = (s) => h("span", { class: `badge s-${s}`, "data-state": s }, s);
export const fmtBytes = (n) => n == null ? "–" : n >= 2 ** 40 ? `${(n / 2 ** 40).toFixed(1)} TiB`
  : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
export const fmtTime = (t) => t ? new Date(t).toLocaleString() : "–";

export function toast(message, error = false) {
  const t = h("div", { class: `toast${error ? " error" : ""}` }, message);
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), error ? 8000 : 4000);
}

// A confirmation listing what will happen; resolves true when the user goes ahead.
export function confirmList(title, lines, okLabel = "Go ahead") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  const body = document.getElementById("confirm-body");
  body.replaceChildren(h("ul", {}, lines.map((l) => h("li", {}, l))));
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// Every item of a list, following `next` (at most `max` items).
export async function listAll(path, max = 10000) {
  let url = path.startsWith("/") ? path : `/api/v2/${path}`, items = [];
  while (url && items.length < max) { const page = await get(url); items = items.concat(page.items); url = page.next; }
  return items;
}

// What the shell does when a call finds the session gone (stop the live updates, show sign-in).
let signedOut = () => {};
export function whenSignedOut(fn) { signedOut = fn; }

// -- what pages register -----------------------------------------------------------------------
export const routes = [];  // [pattern, render(view, ...groups)], the first match wins
export function route(pattern, render) { routes.push([pattern, render]); }

export function query() {
  const q = location.hash.split("?")[1] || "";
  return Object.fromEntries(new URLSearchParams(q));
}
export function setQuery(params) {
  const clean = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  const qs = new URLSearchParams(clean).toString();
  const base = location.hash.split("?")[0] || "#/";
  history.replaceState(null, "", qs ? `${base}?${qs}` : base);
}

// The current page's listeners of live events and its clean-ups when it is left; the shell empties
// both at every render.
export const listeners = [];
export const leaving = [];
export function onEvents(fn) { listeners.push(fn); }
export function onLeave(fn) { leaving.push(fn); }
