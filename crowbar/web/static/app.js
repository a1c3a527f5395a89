// The web UI's shell: sign-in, the hash router, live updates from the event log, and start-up.
// Pages are in pages.js, deployments.js and admin.js (they register their routes when imported);
// what they share is in kit.js. Everything the UI shows comes from /api/v2, the same API as the CLI's.
import { ApiError, api, get, h, leaving, listeners, routes, state, whenSignedOut } from "./kit.js";
import "./pages.js";        // imported in this order: their routes are tried in it
import "./deployments.js";
import "./admin.js";

// -- live updates --------------------------------------------------------------------------------
// The UI follows the event log and tells the current page which objects changed. First choice:
// server-sent events (GET /events/stream, after the last event id seen; one reader per server
// process feeds every open stream, and a stream lasts two minutes, then the browser reconnects by
// itself with Last-Event-ID, so nothing is missed). Fallback: polling GET /events?marker=<last id>
// every POLL_MS, when the browser has no EventSource, when the stream fails again and again
// without a message (a proxy that buffers or refuses it), or when the address asks (?live=poll).
const POLL_MS = 1500;
const SSE_FAILURES = 3;  // connection errors in a row without a message before falling back
let lastEvent = null, timer = null, source = null, failures = 0, batch = [], flushing = null;

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
// Each render draws into a view of its own, put in <main> at once: a page still awaiting its data
// when the address changes again finishes into a detached view, never over the newer page;
// a listener it registers then only updates that detached view.
async function render() {
  if (!state.user) return;
  for (const fn of leaving.splice(0)) fn();
  listeners.length = 0;
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
whenSignedOut(() => { stopLive(); signIn(); });

async function boot() {
  try {
    const me = await get("session");
    if (!me.csrf) throw new ApiError(401, {});
    Object.assign(state, { user: me.user, role: me.role, csrf: me.csrf });
    start();
  } catch (e) { signIn(); }
}

boot();
