// Dashboard, nodes (list and page), barclamps and roles, networks, events.
import { runLogPanel, consoleCard } from "./logs.js";
import { api, get, h, badge, fmtBytes, fmtTime, toast, confirmList, listAll, route, onEvents, onLeave,
         query, setQuery, canChange, ApiError } from "./kit.js";

const LIFECYCLE_ORDER = ["pending", "discovered", "allocated", "hardware-installing", "hardware-installed",
  "installing", "installed", "readying", "ready", "problem"];

function kv(obj) {
  return h("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) =>
    [h("dt", {}, k), h("dd", {}, v instanceof Node ? v : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "–"))]));
}

function table(headers, rows, attrs = {}) {
  return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))));
}

// Re-run `fn` at most once per `ms` when events arrive that `match` accepts.
function liveRefresh(match, fn, ms = 300) {
  let pending = null;
  onEvents((events) => {
    if (!events.some(match) || pending) return;
    pending = setTimeout(async () => { pending = null; await fn(); }, ms);
  });
  onLeave(() => clearTimeout(pending));
}

// -- dashboard -----------------------------------------------------------------------------------
route(/^\/$/, async (main) => {
  const body = h("div", { id: "dashboard" });
  main.replaceChildren(h("h1", {}, "Dashboard"), body);
  async function draw() {
    const d = await get("dashboard");
    const a = d.anneal, total = a.total || 0, counts = a.counts;
    const bar = h("div", { class: "progress", title: "annealer progress" },
      ["active", "transition", "todo", "blocked", "error"].map((s) =>
        h("span", { class: `s-${s}`, style: `width:${total ? (100 * (counts[s] || 0) / total) : 0}%` })));
    const nodeStates = Object.entries(d.nodes.by_state).sort((x, y) => LIFECYCLE_ORDER.indexOf(x[0]) - LIFECYCLE_ORDER.indexOf(y[0]));
    body.replaceChildren(
      h("div", { class: "cards" },
        h("div", { class: "card", id: "card-nodes" }, h("h2", {}, `Nodes (${d.nodes.total})`),
          table(["state", "nodes"], nodeStates.map(([s, n]) =>
            h("tr", {}, h("td", {}, h("a", { href: `#/nodes?state=${s}` }, badge(s))), h("td", {}, n))))),
        h("div", { class: "card", id: "card-noderoles" }, h("h2", {}, `Noderoles (${d.noderoles.total})`),
          table(["state", "noderoles"], Object.entries(d.noderoles.by_state).map(([s, n]) =>
            h("tr", {}, h("td", {}, badge(s)), h("td", {}, n))))),
        h("div", { class: "card", id: "card-anneal" }, h("h2", {}, "Annealer"),
          h("p", {}, badge(a.status), ` ${counts.active || 0} of ${total} committed noderoles active`),
          bar,
          h("p", { class: "muted" }, `${counts.transition || 0} running, ${counts.todo || 0} to do, ${counts.blocked || 0} blocked, ${counts.error || 0} failed`,
            a.waiting_on_unavailable_nodes ? `; ${a.waiting_on_unavailable_nodes} wait on dead or reserved nodes` : ""))),
      h("h2", {}, "Deployments"),
      table(["deployment", "state", "status", "noderoles", "parent"], d.deployments.map((x) => h("tr", {},
        h("td", {}, h("a", { href: `#/deployments/${encodeURIComponent(x.name)}` }, x.name)), h("td", {}, x.state),
        h("td", {}, badge(x.status)), h("td", {}, x.noderoles), h("td", {}, x.parent || "–")))),
      h("h2", {}, `Latest failures (${d.failures_total})`),
      table(["noderole", "role", "node", "deployment", "since"], d.failures.map((f) => h("tr", {},
        h("td", {}, h("a", { href: `#/deployments/${encodeURIComponent(f.deployment)}?noderole=${f.id}` }, `#${f.id}`)),
        h("td", {}, f.role), h("td", {}, h("a", { href: `#/nodes/${f.node}` }, f.node)), h("td", {}, f.deployment),
        h("td", {}, fmtTime(f.updated_at)))), { id: "failures" }));
  }
  await draw();
  liveRefresh(() => true, draw, 800);
});

// -- nodes list ------------------------------------------------------------------------------------
const SORTABLE = { name: "name", state: "state", memory: "memory", cpus: "cpus", disk: "disk", id: "id" };

// A node's power state as its latest power requests tell it (GET /nodes: `power`; GET /nodes/{id}/power: `state`).
export function powerBadge(p) {
  if (!p) return "–";
  const title = [p.by ? `${p.by} ${p.since ? `at ${fmtTime(p.since)}` : ""}` : "no power request has said yet",
    p.pending ? `${p.pending} pending` : "", p.failed ? `last request failed: ${p.failed.action}: ${p.failed.result}` : ""]
    .filter(Boolean).join("; ");
  return h("span", { class: "power", "data-power-state": p.state, title },
    h("span", { class: `badge p-${p.state}` }, `power ${p.state}`),
    p.pending ? h("span", { class: "badge s-transition", "data-pending": p.pending }, `${p.pending}…`) : "",
    p.failed ? h("span", { class: "badge s-error", "data-failed": p.failed.action }, `${p.failed.action} failed`) : "");
}
const BULK = [
  // [label, key, confirmation verb, request(node, extra)]
  ["Allocate", "allocate", "allocate", (n) => api("POST", `nodes/${n.id}/allocate`)],
  ["Deploy…", "deploy", "deploy", (n, x) => api("POST", `nodes/${n.id}/deploy`, x.os ? { os: x.os } : {})],
  ["Power on", "on", "power on", (n) => api("POST", `nodes/${n.id}/power`, { action: "on" })],
  ["Power off", "off", "power off", (n) => api("POST", `nodes/${n.id}/power`, { action: "off" })],
  ["Power cycle", "cycle", "power cycle", (n) => api("POST", `nodes/${n.id}/power`, { action: "cycle" })],
  ["Reinstall", "reinstall", "reinstall the OS on", (n) => api("POST", `nodes/${n.id}/reinstall`)],
  ["Release", "release", "release (erase the disks of)", (n) => api("POST", `nodes/${n.id}/release`)],
  ["Delete", "delete", "delete", (n) => api("DELETE", `nodes/${n.id}`)],
];

route(/^\/nodes$/, async (main) => {
  const q = query();
  const f = { name: q.name || "", state: q.state || "", deployment: q.deployment || "", tag: q.tag || "", memory_min: q.memory_min || "",
              cpus_min: q.cpus_min || "", disk_min: q.disk_min || "", sort: q.sort || "name", limit: q.limit || "100" };
  let markers = [], rows = [], selected = new Map(), next = null, current = null;
  const [states, deps] = await Promise.all([get("node_states").catch(() => ({})), listAll("deployments", 500)]);
  const stateNames = Object.keys(states.states || {}).length ? Object.keys(states.states) : LIFECYCLE_ORDER;
  const input = (name, label, attrs = {}) => h("label", {}, label, h("input", { name, value: f[name], ...attrs }));
  const select = (name, label, options) => h("label", {}, label, h("select", { name },
    h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: o === f[name] }, o))));
  const form = h("form", { class: "filters", id: "node-filters", onsubmit: (ev) => {
    ev.preventDefault();
    for (const el of form.elements) if (el.name) f[el.name] = el.value.trim();
    markers = []; load(null);
  } },
  input("name", "Name starts with", { type: "search", placeholder: "e.g. rack1-" }),
  select("state", "State", stateNames), select("deployment", "Deployment", deps.map((d) => d.name)),
  input("tag", "Tag", { type: "search", placeholder: "e.g. big-mem", maxlength: 64, style: "width:8rem" }),
  input("memory_min", "Memory ≥ MiB", { type: "number", min: 0, style: "width:7rem" }),
  input("cpus_min", "CPUs ≥", { type: "number", min: 0, style: "width:5rem" }),
  input("disk_min", "Disk ≥ GiB", { type: "number", min: 0, style: "width:7rem", title: "all of a node's disks together" }),
  h("button", { class: "primary" }, "Filter"));
  const info = h("span", { class: "muted", id: "page-info" });
  const tagNote = h("p", { class: "field-error", id: "tag-note" });
  const prev = h("button", { id: "prev", onclick: () => { markers.pop(); load(markers[markers.length - 1] ?? null); } }, "← Previous");
  const nextB = h("button", { id: "next", onclick: () => { markers.push(next); load(next); } }, "Next →");
  const bulk = h("div", { class: "bar", id: "bulk" });
  const tbody = h("tbody");
  const head = h("tr");
  const grid = h("table", { id: "nodes" }, h("thead", {}, head), tbody);
  main.replaceChildren(h("h1", {}, "Nodes"), form, canChange() ? bulk : "", h("div", { class: "pager" }, prev, nextB, info), tagNote, grid);

  function header() {
    const col = (label, key) => {
      if (!key) return h("th", {}, label);
      const on = f.sort.replace("-", "") === key;
      return h("th", { "aria-sort": on ? (f.sort.startsWith("-") ? "descending" : "ascending") : "none" },
        h("button", { class: "sort", onclick: () => { f.sort = on && !f.sort.startsWith("-") ? `-${key}` : key; markers = []; load(null); } },
          label, on ? (f.sort.startsWith("-") ? " ▼" : " ▲") : ""));
    };
    const all = h("input", { type: "checkbox", "aria-label": "select all on this page", id: "select-all",
      checked: rows.length > 0 && rows.every((n) => selected.has(n.id)),
      onchange: (ev) => { for (const n of rows) ev.target.checked ? selected.set(n.id, n) : selected.delete(n.id); draw(); } });
    head.replaceChildren(canChange() ? h("th", {}, all) : "", col("Name", "name"), col("State", "state"), col("OS"),
      col("Memory", "memory"), col("CPUs", "cpus"), col("Disk", "disk"), col("Power"), col("Alive"), col("Available"), col("Boot env"),
      tagged() ? col("Tags") : "");
  }
  function draw(changed = new Set()) {
    header();
    tbody.replaceChildren(...rows.map((n) => h("tr", { class: changed.has(n.id) ? "flash" : "", "data-node": n.name },
      canChange() ? h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${n.name}`, checked: selected.has(n.id),
        onchange: (ev) => { ev.target.checked ? selected.set(n.id, n) : selected.delete(n.id); draw(); } })) : "",
      h("td", {}, h("a", { href: `#/nodes/${n.name}` }, n.name)), h("td", {}, badge(n.state)), h("td", {}, n.os || "–"),
      h("td", {}, fmtBytes(n.memory_bytes)), h("td", {}, n.cpus ?? "–"), h("td", { "data-col": "disk" }, fmtBytes(n.disk_bytes)),
      h("td", { "data-col": "power" }, powerBadge(n.power)), h("td", { "data-col": "alive" }, n.alive ? "yes" : "no"),
      h("td", {}, n.available ? "yes" : "no"), h("td", {}, n.bootenv),
      tagged() ? h("td", {}, (n.tags || []).map((t) => h("a", { class: "tag", href: `#/nodes?tag=${encodeURIComponent(t)}`,
        onclick: (ev) => { ev.preventDefault(); f.tag = t; form.elements.tag.value = t; markers = []; load(null); } }, t))) : "")));
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 12, class: "muted" }, "no nodes match")));
    const first = markers.length * Number(f.limit);
    info.textContent = rows.length ? `nodes ${first + 1}–${first + rows.length}${next ? "" : " (last page)"}` : "";
    prev.disabled = markers.length === 0; nextB.disabled = !next;
    bulk.replaceChildren(h("span", { id: "selected-count" }, `${selected.size} selected`),
      ...BULK.map(([label, key]) => h("button", { disabled: selected.size === 0, "data-action": key,
        class: key === "delete" || key === "release" ? "danger" : "", onclick: () => runBulk(key) }, label)),
      selected.size ? h("button", { onclick: () => { selected.clear(); draw(); } }, "Clear selection") : "");
  }
  function tagged() { return rows.some((n) => Array.isArray(n.tags)); }
  async function load(marker, changed) {
    const params = new URLSearchParams(Object.entries({ ...f }).filter(([, v]) => v !== ""));
    if (marker != null) params.set("marker", marker);
    setQuery({ ...f });
    try {
      const page = await get(`nodes?${params}`);
      const before = new Map(rows.map((n) => [n.id, n.state]));
      rows = page.items; current = marker;
      next = page.next ? new URLSearchParams(page.next.split("?")[1]).get("marker") : null;
      const flashed = changed ? new Set(rows.filter((n) => before.has(n.id) && before.get(n.id) !== n.state).map((n) => n.id)) : new Set();
      tagNote.textContent = "";
      draw(flashed);
    } catch (e) {
      // Tags come from the OS rules (issue 11): a server without them refuses the parameter (400);
      // say why the list did not change rather than show it as if it were filtered.
      if (e.status === 400 && f.tag && /unknown query parameter 'tag'/.test(e.message)) tagNote.textContent = `this server does not tag nodes (${e.message})`;
      else toast(e.message, true);
    }
  }
  async function runBulk(key) {
    const [label, , verb, request] = BULK.find((b) => b[1] === key);
    const nodes = [...selected.values()];
    const extra = {};
    if (key === "deploy") {
      const images = await get("os_images").catch(() => ({ items: [] }));
      const names = images.items.map((i) => i.name);
      extra.os = window.prompt(`OS to deploy (${names.join(", ") || "none built yet"}); empty: each node's default`, names[0] || "") || "";
    }
    const ok = await confirmList(`${label.replace("…", "")} ${nodes.length} node${nodes.length > 1 ? "s" : ""}?`,
      nodes.map((n) => `${verb} ${n.name}${extra.os ? ` with ${extra.os}` : ""} (now ${n.state}, power ${n.power?.state ?? "unknown"}` +
        `${n.power?.pending ? `, ${n.power.pending} pending` : ""})`), label.replace("…", ""));
    if (!ok) return;
    let failed = 0;
    for (const n of nodes) {
      try { await request(n, extra); } catch (e) { failed++; toast(`${n.name}: ${e.message}`, true); }
    }
    toast(`${verb}: ${nodes.length - failed} of ${nodes.length} accepted`);
    selected.clear();
    load(current, true);
  }
  await load(null);
  liveRefresh((e) => e.object_type === "node" || e.object_type === "power_request", () => load(current, true));
});

// -- node page ---------------------------------------------------------------------------------------
function installSteps(install) {
  const steps = install.steps || [];
  return table(["step", "at", "took"], steps.map((s, i) => {
    const nextAt = steps[i + 1] ? new Date(steps[i + 1].at) : null;
    const took = nextAt ? `${((nextAt - new Date(s.at)) / 1000).toFixed(1)} s` : "(current)";
    return h("tr", {}, h("td", {}, badge(s.state)), h("td", {}, fmtTime(s.at)), h("td", {}, took));
  }), { id: "install-steps" });
}

function inventory(d) {
  if (!d || !Object.keys(d).length) return h("p", { class: "muted" }, "not discovered yet");
  const disks = d.disks || [], nics = d.nics || [];
  return h("div", {},
    kv({ CPU: `${d.cpu?.count ?? "?"} × ${d.cpu?.model ?? "?"}`, Memory: fmtBytes(d.memory?.total_bytes),
         Installed: fmtBytes(d.memory?.installed_bytes), Firmware: d.firmware || "–", Kernel: d.kernel || "–",
         System: [d.dmi?.vendor, d.dmi?.product, d.dmi?.serial].filter(Boolean).join(" / ") || "–",
         BMC: d.bmc ? JSON.stringify(d.bmc) : "–" }),
    h("h3", {}, "Disks"), table(["name", "size", "model", "serial", "rotational"], disks.map((x) => h("tr", {},
      h("td", {}, x.name), h("td", {}, fmtBytes(x.size_bytes)), h("td", {}, x.model || ""), h("td", {}, x.serial || ""),
      h("td", {}, x.rotational ? "yes" : "no")))),
    h("h3", {}, "NICs"), table(["name", "MAC", "speed", "driver", "bus", "link"], nics.map((x) => h("tr", {},
      h("td", {}, x.name), h("td", {}, x.mac), h("td", {}, x.speed ?? "–"), h("td", {}, x.driver || ""), h("td", {}, x.bus || ""),
      h("td", {}, x.link ? "up" : "down")))));
}

route(/^\/nodes\/([^/?]+)$/, async (main, key) => {
  // What a live refresh redraws (top, noderoles, rest) and what it keeps (the followed run log and
  // the serial console, which read on by themselves).
  const top = h("div"), noderolesBox = h("div"), logBox = h("div", { id: "run-log-box" }), rest = h("div");
  let node = null, follower = null, selectedId = Number(query().noderole) || null;
  function follow(id) {
    if (follower) follower.stop();
    selectedId = id; setQuery(id ? { noderole: id } : {});
    follower = id ? runLogPanel(id) : null;
    logBox.replaceChildren(follower ? follower.panel : h("p", { class: "muted" }, "Choose a noderole's log above."));
    for (const tr of noderolesBox.querySelectorAll("tr[data-noderole]")) tr.classList.toggle("selected", Number(tr.dataset.noderole) === id);
  }
  async function draw() {
    const n = await get(`nodes/${encodeURIComponent(key)}`);
    const [noderoles, power, events, plan, history, template] = await Promise.all([
      listAll(`node_roles?node=${n.id}`, 1000), get(`nodes/${n.id}/power`).catch(() => null),
      get(`events?object_type=node&object_id=${n.id}&limit=30`), get(`nodes/${n.id}/network_plan`).catch((e) => ({ error: e.message })),
      get(`events?object_type=node&object_id=${n.id}&action=lifecycle&limit=100`).then((p) => p.items).catch(() => []),
      get("networks/export").catch(() => null)]);
    const powerBar = canChange() ? h("div", { class: "bar", id: "power-actions" }, ["on", "off", "cycle", "status"].map((a) =>
      h("button", { "data-power": a, onclick: async () => {
        if (a !== "status" && !(await confirmList(`Power ${a} ${n.name}?`, [`power ${a} ${n.name} through ${n.power_driver}`]))) return;
        try { const r = await api("POST", `nodes/${n.id}/power`, { action: a }); toast(`power ${a} queued (request ${r.id})`); await draw(); }
        catch (e) { toast(e.message, true); }
      } }, `Power ${a}`))) : "";
    top.replaceChildren(
      h("h1", {}, n.name, " ", badge(n.state)),
      h("div", { class: "grid2" },
        h("div", { class: "card" }, h("h2", {}, "Lifecycle"), kv({ State: badge(n.state), Reason: n.state_reason || "–",
          "Boot env": n.bootenv, OS: n.os || "–", Tags: tagList(n.tags), Alive: n.alive, Available: n.available,
          "Boot MAC": n.boot_mac || "–", Admin: n.admin, Created: fmtTime(n.created_at), Description: n.description || "–" }),
          h("h3", {}, "OS install"), kv({ Phase: n.install.phase || "–", Image: n.install.image || "–", Disk: n.install.disk || "–" }),
          installSteps(n.install)),
        h("div", { class: "card", id: "power-card" }, h("h2", {}, "Power"), kv({ State: powerBadge(power?.state),
          "Said by": power?.state?.by ? `${power.state.by} at ${fmtTime(power.state.since)}` : "no power request yet",
          Driver: power?.driver || n.power_driver, Settings: power ? JSON.stringify(power.settings) : "–" }),
          power?.state?.failed ? h("p", { class: "field-error" }, `the latest request (${power.state.failed.action}) failed: ${power.state.failed.result}`) : "",
          powerBar,
          h("p", { class: "muted" }, "The state is what the latest power requests did or saw (status asks the driver); ",
            h("a", { href: `#/events?object_type=node&object_id=${n.id}` }, "the node's events"), " list every one."))),
      h("div", { class: "card", id: "lifecycle-history" }, h("h2", {}, "Lifecycle history"), lifecycleHistory(history, n)));
    noderolesBox.replaceChildren(h("h2", {}, `Noderoles (${noderoles.length})`),
      table(["noderole", "role", "deployment", "state", "runs", "log"], noderoles.map((r) => h("tr", { "data-noderole": r.id,
        class: r.id === selectedId ? "selected" : "" },
        h("td", {}, h("a", { href: `#/deployments/${encodeURIComponent(r.deployment)}?noderole=${r.id}` }, `#${r.id}`)),
        h("td", {}, r.role), h("td", {}, r.deployment), h("td", {}, badge(r.state)), h("td", {}, r.run_count),
        h("td", {}, h("button", { "data-log": r.id, onclick: () => follow(r.id) }, r.state === "transition" ? "Follow log" : "Log")))),
      { id: "node-noderoles" }));
    rest.replaceChildren(
      h("h2", {}, "Inventory"), h("div", { class: "card", id: "inventory" }, inventory(n.discovery)),
      h("h2", {}, "Addresses and interface plan"),
      h("div", { class: "card", id: "network-plan" }, plan.error ? h("p", { class: "muted" }, plan.error) : interfacePlan(plan, template)),
      h("h2", {}, "Recent events"), eventsTable(events.items.slice().reverse()));
    node = n;
  }
  await draw();
  main.replaceChildren(top, h("div", { class: "split-even" }, h("div", {}, noderolesBox, logBox), consoleCard(node.name)), rest);
  follow(selectedId);
  liveRefresh((e) => (e.object_type === "node" && node && e.object_id === node.id) || e.object_type === "noderole", draw, 500);
});

// The node's lifecycle moves (its `lifecycle` events, oldest first) with how long it stayed in
// each state: until the next move, or until now for the state it is in.
function lifecycleHistory(moves, n) {
  if (!moves.length) return h("p", { class: "muted" }, `no lifecycle moves recorded (in ${n.state} since ${fmtTime(n.created_at)})`);
  const took = (from, to) => {
    const s = Math.max(0, (to - from) / 1000);
    return s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`;
  };
  return table(["at", "from → to", "by", "why", "stayed"], moves.map((e, i) => {
    const next = moves[i + 1];
    return h("tr", { "data-move": e.to }, h("td", {}, fmtTime(e.at)), h("td", {}, e.from ? badge(e.from) : "", " → ", badge(e.to)),
      h("td", {}, e.actor), h("td", {}, e.message || ""),
      h("td", { "data-took": next ? "done" : "current" }, next ? took(new Date(e.at), new Date(next.at)) : `${took(new Date(e.at), new Date())} so far`));
  }), { id: "lifecycle-moves" });
}

// The conduits of a node's plan: each conduit of the conduit_map entry the node matched, the NIC
// or bond it resolved to (with its members) and the networks on it.
function conduitRows(plan, template) {
  const attachments = Object.values(plan.attachments || {});
  const entry = (template?.conduit_map || []).find((e) => e.pattern === plan.conduit_map_pattern);
  const byName = new Map((plan.interfaces || []).map((i) => [i.name, i]));
  const names = [...new Set([...Object.keys(entry?.conduits || {}), ...attachments.map((a) => a.conduit)])];
  return table(["conduit", "refs", "resolves to", "members", "networks"], names.map((c) => {
    const on = attachments.filter((a) => a.conduit === c);
    const iface = on.find((a) => a.conduit_interface)?.conduit_interface;
    const members = iface && byName.get(iface)?.members?.length ? byName.get(iface).members.join(", ") : iface || "–";
    return h("tr", { "data-conduit": c }, h("td", {}, c), h("td", {}, h("code", {}, (entry?.conduits?.[c] || []).join(" "))),
      h("td", {}, iface || (on.length ? "the BMC" : "unused")), h("td", {}, members), h("td", {}, on.map((a) => a.network).join(", ") || "–"));
  }), { id: "node-conduits" });
}

// GET /nodes/{id}/network_plan (json): the node's addresses (one per network), the conduits, the
// interfaces that carry them (NICs, bonds, VLANs, bridges) and its routes.
function interfacePlan(plan, template) {
  const attachments = Object.values(plan.attachments || {});
  return h("div", {},
    h("h3", {}, "Conduits ", h("span", { class: "muted" }, `(conduit map entry ${plan.conduit_map_pattern || "?"})`)), conduitRows(plan, template),
    h("h3", {}, "Addresses"), table(["network", "address", "on", "conduit", "gateway"], attachments.map((a) => h("tr", { "data-address": a.network },
      h("td", {}, a.network), h("td", {}, a.address), h("td", {}, a.interface || "the BMC"), h("td", {}, `${a.conduit} → ${a.conduit_interface || "–"}`),
      h("td", {}, a.gateway || "–"))), { id: "node-addresses" }),
    h("h3", {}, "Interfaces"), table(["interface", "kind", "MAC", "members / parent", "in", "MTU", "addresses"],
      (plan.interfaces || []).map((i) => h("tr", {}, h("td", {}, i.name), h("td", {}, i.kind), h("td", {}, i.mac || ""),
        h("td", {}, i.parent ? `${i.parent} VLAN ${i.vlan}` : (i.members || []).join(", ")),
        h("td", {}, i.master || ""), h("td", {}, i.mtu), h("td", {}, (i.addresses || []).join(", "))))),
    h("h3", {}, "Routes"), table(["to", "via", "interface", "network"], (plan.routes || []).map((r) => h("tr", {},
      h("td", {}, r.to), h("td", {}, r.via), h("td", {}, r.interface), h("td", {}, r.network)))),
    h("p", { class: "muted" }, "The files it renders to: ", h("code", {}, `crowbar network plan ${plan.node} -o networkd|netplan|ifupdown`)));
}

// A node's tags (computed by the OS rules, issue 11), as links to the nodes they filter.
function tagList(tags) {
  if (!Array.isArray(tags)) return "–";
  if (!tags.length) return "none";
  return h("span", { class: "tags" }, tags.map((t) => h("a", { class: "tag", href: `#/nodes?tag=${encodeURIComponent(t)}` }, t)));
}

export function eventsTable(items, attrs = {}) {
  return table(["#", "at", "actor", "object", "action", "from → to", "message"], items.map((e) => h("tr", { "data-event": e.id },
    h("td", {}, e.id), h("td", {}, fmtTime(e.at)), h("td", {}, e.actor), h("td", {}, objectLink(e)), h("td", {}, e.action),
    h("td", {}, e.from || e.to ? `${e.from || ""} → ${e.to || ""}` : ""), h("td", {}, e.message || ""))), attrs);
}

function objectLink(e) {
  const label = `${e.object_type} ${e.object_id}`;
  if (e.object_type === "node") return h("a", { href: `#/nodes/${e.object_id}` }, label);
  if (e.object_type === "deployment") return h("a", { href: `#/deployments/${e.object_id}` }, label);
  return label;
}

// -- barclamps and roles ---------------------------------------------------------------------------
route(/^\/roles$/, async (main) => {
  const [barclamps, roles] = await Promise.all([listAll("barclamps", 1000), listAll("roles", 5000)]);
  main.replaceChildren(h("h1", {}, "Barclamps and roles"),
    table(["barclamp", "version", "description"], barclamps.map((b) => h("tr", {}, h("td", {}, b.name), h("td", {}, b.version || ""),
      h("td", {}, b.description || "")))),
    h("h2", {}, "Roles"),
    table(["role", "barclamp", "jig", "requires", "flags", "wants attribs", "description"], roles.map((r) => h("tr", {},
      h("td", {}, h("a", { href: `#/roles/${r.name}` }, r.name)), h("td", {}, r.barclamp), h("td", {}, r.jig),
      h("td", {}, (r.requires || []).join(", ")), h("td", {}, (r.flags || []).join(", ")),
      h("td", {}, (r.wants_attribs || []).join(", ")), h("td", { class: "muted" }, r.description || "")))));
});

route(/^\/roles\/([^/?]+)$/, async (main, key) => {
  const r = await get(`roles/${encodeURIComponent(key)}`);
  main.replaceChildren(h("h1", {}, `Role ${r.name}`), kv({ barclamp: r.barclamp, jig: r.jig, requires: (r.requires || []).join(", ") || "–",
    flags: (r.flags || []).join(", ") || "–", "wants attribs": (r.wants_attribs || []).join(", ") || "–", description: r.description || "–" }),
    h("h2", {}, "Attribs"), table(["name", "map", "default", "schema"], (r.attribs || []).map((a) => h("tr", {},
      h("td", {}, a.name), h("td", {}, a.map), h("td", {}, JSON.stringify(a.default)), h("td", {}, h("code", {}, JSON.stringify(a.schema)))))),
    h("h2", {}, "Template"), h("pre", {}, JSON.stringify(r.template, null, 2)));
});

// -- networks ------------------------------------------------------------------------------------------
// GET /networks: every network with each range's size and how many of its addresses are allocated
// (one GROUP BY on the server); GET /networks/export: the conduit map; GET /neutron/networks: the
// tenant segments.
route(/^\/networks$/, async (main) => {
  const [nets, template, segments] = await Promise.all([get("networks"), get("networks/export").catch(() => null),
    listAll("neutron/networks", 2000).catch((e) => ({ error: e.message }))]);
  const items = Array.isArray(nets) ? nets : nets.items || [];
  const body = h("div", { class: "grid2" });
  const conduits = h("div", { id: "conduit-map" });
  const neutron = h("div", { id: "neutron-segments" });
  main.replaceChildren(h("h1", {}, "Networks"), body, h("h2", {}, "Conduits"), conduits, h("h2", {}, "Neutron tenant segments"), neutron);
  if (!items.length) body.append(h("p", { class: "muted" }, "no networks defined"));
  const allocations = await Promise.all(items.map((net) =>
    get(`networks/${encodeURIComponent(net.name)}/allocations?limit=200`).catch(() => ({ items: [], next: null }))));
  items.forEach((net, i) => {
    const allocs = allocations[i];
    const ranges = Object.entries(net.ranges || {});
    body.append(h("div", { class: "card", "data-network": net.name }, h("h2", {}, net.name, " ", h("span", { class: "muted" }, net.category || "")),
      kv({ subnet: net.subnet || "–", VLAN: net.use_vlan ? net.vlan : "untagged", conduit: net.conduit || "–", router: net.router || "–",
           MTU: net.mtu ?? "–", bridge: net.add_bridge ? "yes" : "no", team: net.use_team ? `mode ${net.team_mode}` : "no" }),
      h("h3", {}, "Ranges"), table(["range", "first", "last", "allocated"], ranges.map(([name, r]) => {
        const pct = r.size ? Math.round(100 * (r.used || 0) / r.size) : 0;
        return h("tr", { "data-range": name, "data-used": r.used }, h("td", {}, name), h("td", {}, r.start), h("td", {}, r.end),
          h("td", {}, `${r.used ?? "?"} of ${r.size ?? "?"} (${pct}%)`, h("div", { class: "progress", title: `${pct}% allocated` },
            h("span", { class: pct > 90 ? "s-error" : pct > 70 ? "s-todo" : "s-active", style: `width:${pct}%` }))));
      })),
      h("h3", {}, `Allocations (${net.allocations ?? allocs.items.length})`),
      table(["address", "node", "range"], allocs.items.map((a) => h("tr", {}, h("td", {}, a.address),
        h("td", {}, a.node ? h("a", { href: `#/nodes/${encodeURIComponent(a.node)}` }, a.node) : "–"), h("td", {}, a.range || "")))),
      allocs.next ? h("p", { class: "muted" }, `the first ${allocs.items.length} shown (crowbar network allocations ${net.name})`) : ""));
  });
  // The conduit map: for nodes matching each pattern (NIC count, roles, product), what each conduit
  // is made of; and which networks ride on each conduit.
  const map = template?.conduit_map || [];
  const onConduit = (c) => items.filter((n) => n.conduit === c).map((n) => n.name);
  const allConduits = [...new Set(map.flatMap((e) => Object.keys(e.conduits)).concat(items.map((n) => n.conduit)))];
  conduits.replaceChildren(map.length ? table(["conduit", "networks on it", ...map.map((e) => h("code", {}, e.pattern))],
    allConduits.map((c) => h("tr", { "data-conduit": c }, h("td", {}, c), h("td", {}, onConduit(c).join(", ") || "–"),
      map.map((e) => h("td", {}, h("code", {}, (e.conduits[c] || []).join(" ") || "–"))))), { id: "conduits" })
    : h("p", { class: "muted" }, "no conduit map"),
    h("p", { class: "muted" }, "A node uses the first pattern it matches (its NIC count, roles, product); each reference names NICs by speed and order (",
      h("code", {}, "1g1"), ", ", h("code", {}, "+10g2"), ", ", h("code", {}, "?1g1"), "): docs/networking.md. A node's page shows what its conduits resolved to."));
  if (segments.error) neutron.replaceChildren(h("p", { class: "muted" }, segments.error));
  else neutron.replaceChildren(table(["id", "name", "type", "physical network", "segment", "bridge", "DHCP namespace"],
    segments.map((n) => h("tr", { "data-segment": n.id }, h("td", {}, n.id), h("td", {}, n.name || ""), h("td", {}, n.network_type || ""),
      h("td", {}, n.physical_network || "–"), h("td", {}, n.segmentation_id ?? "–"), h("td", {}, h("code", {}, n.bridge || "")),
      h("td", {}, h("code", {}, n.dhcp_namespace || "")))), { id: "segments" }));
});

// -- events --------------------------------------------------------------------------------------------
// GET /events filtered on the server (object type, object id, action, actor); new events that
// pass the same filters are added as they happen (the live feed: app.js).
route(/^\/events$/, async (main) => {
  const q = query();
  const f = { object_type: q.object_type || "", object_id: q.object_id || "", action: q.action || "", actor: q.actor || "" };
  let items = [];
  const form = h("form", { class: "filters", id: "event-filters", onsubmit: (ev) => {
    ev.preventDefault();
    for (const el of form.elements) if (el.name) f[el.name] = el.value.trim();
    setQuery(f); load();
  } },
  h("label", {}, "Object type", h("select", { name: "object_type" }, h("option", { value: "" }, "any"),
    ["node", "noderole", "deployment", "deployment_role", "power_request", "user", "token", "network", "run"].map((t) =>
      h("option", { value: t, selected: t === f.object_type }, t)))),
  h("label", {}, "Object id", h("input", { name: "object_id", value: f.object_id, type: "number", min: 0, style: "width:7rem" })),
  h("label", {}, "Action", h("input", { name: "action", value: f.action, list: "event-actions", style: "width:9rem", placeholder: "e.g. lifecycle" })),
  h("datalist", { id: "event-actions" }, ["create", "delete", "lifecycle", "power-on", "power-off", "power-cycle", "power-status",
    "commit", "propose", "bind", "requeue", "transition"].map((a) => h("option", { value: a }))),
  h("label", {}, "Actor", h("input", { name: "actor", value: f.actor, style: "width:9rem" })),
  h("button", { class: "primary" }, "Filter"));
  const holder = h("div");
  main.replaceChildren(h("h1", {}, "Events"), h("p", { class: "muted" }, "Newest first; new events appear as they happen."), form, holder);
  const keep = (e) => (!f.object_type || e.object_type === f.object_type) && (!f.object_id || String(e.object_id) === f.object_id)
    && (!f.action || e.action === f.action) && (!f.actor || e.actor === f.actor);
  function draw(fresh = new Set()) {
    holder.replaceChildren(eventsTable(items.slice().reverse(), { id: "events" }));
    for (const tr of holder.querySelectorAll("tr[data-event]")) if (fresh.has(Number(tr.dataset.event))) tr.classList.add("flash");
  }
  async function load() {
    const params = new URLSearchParams({ limit: "200" });
    for (const [k, v] of Object.entries(f)) if (v) params.set(k, v);
    try { items = (await get(`events?${params}`)).items; draw(); } catch (e) { toast(e.message, true); }
  }
  await load();
  onEvents((events) => {
    const seen = new Set(items.map((e) => e.id));
    const fresh = events.filter((e) => keep(e) && !seen.has(e.id));
    if (!fresh.length) return;
    items = items.concat(fresh).sort((a, b) => a.id - b.id).slice(-500);
    draw(new Set(fresh.map((e) => e.id)));
  });
});

export { kv, table, liveRefresh };
