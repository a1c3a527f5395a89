// The web UI's shell: the API client (session cookie + CSRF token), sign-in, the hash router, live
// updates from the event log, and small DOM helpers. Pages are in pages.js and deployments.js.
// Everything the UI shows comes from /api/v2, the same API as the CLI's.

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
  if (r.status === 401 && state.user) { state.user = null; stopLive(); signIn(); }
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

// -- live updates --------------------------------------------------------------------------------
// The UI follows the event log and tells the current page which objects changed. First choice:
// server-sent events (GET /events/stream, after the last event id seen; one reader per server
// process feeds every open stream, and a stream lasts two minutes, then the browser reconnects by
// itself with Last-Event-ID, so nothing is missed). Fallback: polling GET /events?marker=<last id>
// every POLL_MS, when the browser has no EventSource, when the stream fails again and again
// without a message (a proxy that buffers or refuses it), or when the address asks (?live=poll).
export const POLL_MS = 1500;
const SSE_FAILURES = 3;  // connection errors in a row without a message before falling back
let lastEvent = null, listeners = [], timer = null, source = null, failures = 0, batch = [], flushing = null;

function deliver(events) {
  for (const fn of listeners) { try { fn(events); } catch (e) { console.error(e); } }
}

function showLive(mode) {
  const el = document.getElementById("live-mode");
  if (el) { el.textContent = mode === "stream" ? "● live" : mode === "polling" ? "● live (polling)" : "○ offline"; el.dataset.mode = mode; }
}

async function tail() {
  const page = await get("events?limit=1");
  lastEvent = page.items.length ? page.items[page.items.length - 1].id : 0;
}

function startStream() {
  source = new EventSource(`/api/v2/events/stream?after=${lastEvent}`);
  source.addEventListener("open", () => showLive("stream"));
  source.addEventListener("event", (m) => {
    failures = 0;
    const e = JSON.parse(m.data);
    if (e.id > lastEvent) lastEvent = e.id;
    batch.push(e);  // delivered together: a burst of events re-draws a page once
    if (!flushing) flushing = setTimeout(() => { flushing = null; const b = batch; batch = []; deliver(b); }, 100);
  });
  source.addEventListener("reset", () => { failures = 0; render(); });  // too far behind: draw the page again
  source.addEventListener("end", () => { failures = 0; });  // the browser reconnects by itself
  source.addEventListener("error", () => {
    if (!state.user) return stopLive();
    failures++;  // once after each stream's end (the reconnect); more: something is wrong
    if (failures > 1) showLive("offline");
    if (source.readyState === EventSource.CLOSED || failures >= SSE_FAILURES) {  // refused, or never gets through
      source.close(); source = null;
      console.warn("events: the event stream failed; polling instead");
      timer = setTimeout(pollEvents, POLL_MS);
    }
  });
}

async function pollEvents() {
  timer = null;
  try {
    if (lastEvent === null) await tail();
    else {
      let url = `/api/v2/events?marker=${lastEvent}&limit=500`;
      while (url) {
        const page = await get(url);
        if (page.items.length) { lastEvent = page.items[page.items.length - 1].id; deliver(page.items); }
        url = page.next;
      }
    }
    showLive("polling");
  } catch (e) { showLive("offline"); if (!(e instanceof ApiError && e.status === 401)) console.warn("events:", e.message); }
  if (state.user) timer = setTimeout(pollEvents, POLL_MS);
}

function stopLive() {
  if (source) { source.close(); source = null; }
  clearTimeout(timer); timer = null; failures = 0;
}

async function startLive() {
  stopLive();
  const poll = new URLSearchParams(location.search).get("live") === "poll" || !window.EventSource;
  try { await tail(); } catch (e) { lastEvent = null; }
  if (!state.user) return;
  if (poll || lastEvent === null) pollEvents(); else startStream();
}

// -- router ------------------------------------------------------------------------------------
const routes = [];
export function route(pattern, render) { routes.push([pattern, render]); }
let cleanup = [];

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

// Each render draws into a view of its own, put in <main> at once: a page still awaiting its data
// when the address changes again finishes into a detached view, never over the newer page;
// a listener it registers then only updates that detached view.
export function onEvents(fn) { listeners.push(fn); }
export function onLeave(fn) { cleanup.push(fn); }

async function render() {
  if (!state.user) return;
  for (const fn of cleanup) fn();
  cleanup = []; listeners = [];
  const path = (location.hash.slice(1) || "/").split("?")[0];
  const main = document.getElementById("main");
  const view = h("div", { class: "view" });
  main.replaceChildren(view);
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(1);
    a.classList.toggle("current", target === "/" ? path === "/" : path.startsWith(target));
  }
  for (const [pattern, fn] of routes) {
    const m = path.match(pattern);
    if (m) {
      try { await fn(view, ...m.slice(1).map(decodeURIComponent)); }
      catch (e) { view.replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "field-error" }, e.message)); }
      return;
    }
  }
  view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the dashboard")));
}

// -- sign-in -----------------------------------------------------------------------------------
function showUser() {
  document.getElementById("nav").hidden = !state.user;
  document.getElementById("nav-users").hidden = state.role !== "admin";
  const who = document.getElementById("who");
  who.replaceChildren();
  if (!state.user) return;
  who.append(`${state.user} (${state.role})`, h("button", { id: "sign-out", onclick: async () => {
    try { await api("DELETE", "session"); } catch (e) { /* gone already */ }
    state.user = null; stopLive(); signIn();
  } }, "Sign out"));
}

function signIn(message) {
  showUser();
  const main = document.getElementById("main");
  const error = h("p", { class: "field-error", id: "signin-error" }, message || "");
  const token = h("input", { id: "token", type: "password", autocomplete: "off", required: true,
                             placeholder: "cb_…", "aria-label": "API token" });
  const form = h("form", { class: "card signin", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const out = await api("POST", "session", { token: token.value });
      token.value = "";
      Object.assign(state, { user: out.user, role: out.role, csrf: out.csrf });
      start();
    } catch (e) { error.textContent = e.message; }
  } },
  h("h1", {}, "Sign in to Crowbar"),
  h("p", { class: "muted" }, "Users sign in with one of their API tokens (Crowbar has no passwords): ",
    h("code", {}, "crowbar tokens create NAME"), ". The token is exchanged for a session; it is not kept in the browser."),
  h("label", {}, "API token", token), error, h("p", {}, h("button", { class: "primary", id: "sign-in" }, "Sign in")));
  main.replaceChildren(form);
  token.focus();
}

function start() {
  showUser();
  startLive();
  render();
}

window.addEventListener("hashchange", render);

export async function boot() {
  try {
    const me = await get("session");
    if (!me.csrf) throw new ApiError(401, {});
    Object.assign(state, { user: me.user, role: me.role, csrf: me.csrf });
    start();
  } catch (e) { signIn(); }
}

import("./pages.js").then(() => Promise.all([import("./deployments.js"), import("./admin.js")])).then(boot);
