// Followed logs: a noderole's run log (streaming while the run runs) and a lab VM's serial console.
// Both poll a small read of what is new (GET /node_roles/{id}/log?offset=, GET /nodes/{id}/console?offset=):
// the server reads only the asked part, so a follower costs one short request a second.
import { get, h, badge, fmtTime, onLeave } from "./kit.js";

export const FOLLOW_MS = 1000;   // while a run runs / the console is followed
export const IDLE_MS = 3000;     // waiting for a noderole's next run
const MAX_SHOWN = 512 * 1024;    // characters kept in the page (the tail)

const codePoints = (s) => { let n = 0; for (const _ of s) n++; return n; };  // the server counts characters

// Keep a <pre> scrolled to the bottom when the reader was at the bottom (they may scroll up to read).
function appendTo(pre, text, replace) {
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  let content = replace ? text : pre.textContent + text;
  if (content.length > MAX_SHOWN) content = "…\n" + content.slice(-MAX_SHOWN);
  pre.textContent = content;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// A panel following the latest run of noderole `id`: the log streams while the run runs; when it
// ends the final log (which replaces the streamed one on the server) is read once more from the
// start; a new run (a retry) is picked up and followed in turn. Stops when the page is left.
export function runLogPanel(id) {
  const title = h("span", { id: "run-log-title" }, "Run log");
  const pre = h("pre", { id: "run-log", class: "log", tabindex: "0", "aria-live": "off" }, "…");
  const panel = h("div", { class: "card", id: "run-log-panel", "data-noderole": id }, h("h3", {}, title), pre);
  let run = null, running = false, offset = 0, timer = null, stopped = false, replace = true;

  async function step() {
    timer = null;
    if (stopped) return;
    let again = false;
    try {
      const r = await get(`node_roles/${id}/log?offset=${offset}`);
      if (stopped) return;
      if (r.run === null) {
        pre.textContent = "(not run yet)"; pre.dataset.state = "none";
      } else {
        const fresh = r.run !== run || (running && r.state !== "running") || r.length < offset;
        if (fresh && offset !== 0) { run = r.run; running = r.state === "running"; offset = 0; replace = again = true; }
        else {
          run = r.run; running = r.state === "running";
          const whole = fresh || replace;
          replace = false;
          appendTo(pre, r.text, whole);
          offset += codePoints(r.text);
          again = offset < r.length;  // more than one answer's worth: read on at once
          title.replaceChildren(`Run log: run ${r.run} `, badge(r.state), ` started ${fmtTime(r.started_at)}`,
            r.finished_at ? `, finished ${fmtTime(r.finished_at)}` : running ? " (streaming)" : "");
          Object.assign(pre.dataset, { state: r.state, run: r.run });
        }
      }
    } catch (e) {
      pre.dataset.error = e.message;
      if (e.status === 404) { pre.textContent = e.message; return; }  // the noderole is gone: stop
    }
    if (!stopped) timer = setTimeout(step, again ? 0 : running ? FOLLOW_MS : IDLE_MS);
  }
  const stop = () => { stopped = true; clearTimeout(timer); };
  onLeave(stop);
  step();
  return { panel, stop };
}

// What a terminal would interpret rather than show: escape sequences (colours, cursor moves) and
// other control characters; a lone carriage return (a redrawn line) becomes a new line.
export function printable(text) {
  return text.replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, "").replace(/\x1b[()][0-9A-Za-z]/g, "").replace(/\x1b[@-_]/g, "")
    .replace(/\r\n/g, "\n").replace(/\r/g, "\n").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

// A lab VM's serial console (read-only): the last 64 KiB, then what the VM writes, every second.
export function consoleCard(node) {
  const note = h("p", { class: "muted", id: "console-note" }, "…");
  const pre = h("pre", { id: "console", class: "log console", tabindex: "0" });
  const card = h("div", { class: "card", id: "console-card" }, h("h2", {}, "Serial console"), note, pre);
  let next = null, timer = null, stopped = false;
  async function step() {
    timer = null;
    if (stopped) return;
    let again = false;
    try {
      const r = await get(`nodes/${encodeURIComponent(node)}/console${next === null ? "" : `?offset=${next}`}`);
      if (stopped) return;
      if (!r.available) { note.textContent = r.reason; pre.hidden = true; next = null; }
      else {
        pre.hidden = false;
        if (next !== null && r.size < next) { next = null; again = true; }  // a new file (the VM started again)
        else {
          const first = next === null;
          appendTo(pre, printable(r.text), first);
          note.textContent = `read-only: what the VM writes to its serial port (${r.size} bytes so far${first && r.offset ? ", the last 64 KiB shown" : ""})`;
          next = r.next; again = r.next < r.size;
          pre.dataset.size = r.size;
        }
      }
    } catch (e) { note.textContent = e.message; if (e.status === 404) return; }
    if (!stopped) timer = setTimeout(step, again ? 0 : FOLLOW_MS);
  }
  onLeave(() => { stopped = true; clearTimeout(timer); });
  step();
  return card;
}
