// Deployments: the list; a deployment's noderole graph (Cytoscape.js with ELK's layered layout,
// noderoles grouped by node, edges from requires, coloured by state, updated live), a noderole's
// attributes, wall, run log and retry; binding roles; proposals edited through forms made from
// the attribs' JSON schemas, compared with what is committed, then committed.
import { api, get, h, badge, fmtTime, toast, confirmList, listAll, route, onEvents, onLeave, query, setQuery,
         canChange } from "./kit.js";
import { kv, table, liveRefresh } from "./pages.js";
import { runLogPanel } from "./logs.js";

const COLORS = { proposed: "#9aa3ae", todo: "#e0b000", transition: "#2f7de1", active: "#2a9d4b", error: "#d63b3b", blocked: "#8a4fbf" };

let vendor = null;
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src; s.onload = resolve; s.onerror = () => reject(new Error(`${src} is missing: run make web`));
    document.head.append(s);
  });
}
function loadVendor() {  // 5 MB of graph code: fetched only by the pages that draw a graph
  vendor = vendor || loadScript("vendor/cytoscape.min.js").then(() => loadScript("vendor/elk.bundled.js"))
    .then(() => loadScript("vendor/cytoscape-elk.js")).then(() => { window.cytoscape.use(window.cytoscapeElk); });
  return vendor;
}

route(/^\/deployments$/, async (main) => {
  async function draw() {
    const items = await listAll("deployments", 2000);
    const create = canChange() ? h("form", { class: "filters", id: "create-deployment", onsubmit: async (ev) => {
      ev.preventDefault();
      const name = ev.target.elements.name.value.trim();
      try { await api("POST", "deployments", { name }); location.hash = `#/deployments/${encodeURIComponent(name)}`; }
      catch (e) { toast(e.message, true); }
    } }, h("label", {}, "New deployment", h("input", { name: "name", required: true, placeholder: "name" })),
    h("button", { class: "primary" }, "Create")) : "";
    main.replaceChildren(h("h1", {}, "Deployments"), create,
      table(["deployment", "parent", "state", "status", "noderoles", "by state"], items.map((d) => h("tr", {},
        h("td", {}, h("a", { href: `#/deployments/${encodeURIComponent(d.name)}` }, d.name)), h("td", {}, d.parent || "–"),
        h("td", {}, d.state), h("td", {}, badge(d.status)), h("td", {}, d.noderoles),
        h("td", {}, Object.entries(d.counts).map(([s, n]) => [badge(s), ` ${n} `])))), { id: "deployments" }));
  }
  await draw();
  liveRefresh((e) => e.object_type === "deployment" || e.object_type === "noderole", draw, 800);
});

// -- a form from a JSON schema ---------------------------------------------------------------------
function dig(doc, path) { return path.split("/").reduce((d, k) => (d && typeof d === "object" ? d[k] : undefined), doc); }
function put(doc, path, value) {
  const keys = path.split("/"); let d = doc;
  for (const k of keys.slice(0, -1)) { if (typeof d[k] !== "object" || d[k] === null) d[k] = {}; d = d[k]; }
  d[keys[keys.length - 1]] = value;
  return doc;
}

// The schema's own rules, checked as the user types (the server checks them again on save).
function validate(schema, value) {
  if (value === undefined) return null;
  const t = schema.type;
  const types = Array.isArray(t) ? t : t ? [t] : [];
  const typeOf = (v) => v === null ? "null" : Array.isArray(v) ? "array" : Number.isInteger(v) ? "integer" : typeof v;
  if (types.length && !types.some((x) => x === typeOf(value) || (x === "number" && typeOf(value) === "integer")))
    return `must be ${types.join(" or ")}`;
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) return `must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`;
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) return `must be at least ${schema.minimum}`;
    if (schema.maximum !== undefined && value > schema.maximum) return `must be at most ${schema.maximum}`;
  }
  if (typeof value === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) return `must be at least ${schema.minLength} characters`;
    if (schema.maxLength !== undefined && value.length > schema.maxLength) return `must be at most ${schema.maxLength} characters`;
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(value)) return `must match ${schema.pattern}`;
  }
  return null;
}

function fieldFor(attrib, current, onChange) {
  const schema = attrib.schema || {}, type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  const error = h("span", { class: "field-error", "data-error-for": attrib.name });
  let input;
  const parse = () => {
    if (type === "boolean") return input.checked;
    const raw = input.value;
    if (raw === "") return undefined;
    if (type === "number" || type === "integer") return raw.trim() === "" || isNaN(Number(raw)) ? raw : Number(raw);
    if (type === "object" || type === "array") { try { return JSON.parse(raw); } catch (e) { return raw; } }
    return raw;
  };
  const changed = () => { const v = parse(); const msg = validate(schema, v); error.textContent = msg || ""; onChange(attrib, v, msg); };
  const shown = current === undefined ? attrib.default : current;
  if (schema.enum) input = h("select", { name: attrib.name, onchange: changed }, schema.enum.map((e) => h("option", { value: e, selected: e === shown }, String(e))));
  else if (type === "boolean") input = h("input", { type: "checkbox", name: attrib.name, checked: !!shown, onchange: changed });
  else if (type === "object" || type === "array") input = h("textarea", { name: attrib.name, rows: 3, oninput: changed }, JSON.stringify(shown ?? null));
  else input = h("input", { name: attrib.name, value: shown ?? "", inputmode: type === "number" || type === "integer" ? "decimal" : undefined, oninput: changed });
  if (!canChange()) input.disabled = true;
  return h("label", { class: "attrib" }, h("span", {}, attrib.name, " ", h("code", { class: "muted" }, `${attrib.map} · ${JSON.stringify(schema)}`)), input, error);
}

// A unified diff of two JSON documents (keys sorted, two-space indent): the longest common
// subsequence of their lines, each change shown with CONTEXT lines around it, in document order.
const CONTEXT = 2;
function sortedJson(v) {
  if (Array.isArray(v)) return v.map(sortedJson);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortedJson(v[k])]));
  return v;
}
export function diffOps(a, b) {
  const n = a.length, m = b.length;
  if (n * m > 4e6) return [...a.map((l) => ["-", l]), ...b.map((l) => ["+", l])];  // too big to align: all out, all in
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const ops = []; let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { ops.push([" ", a[i]]); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) ops.push(["-", a[i++]]);
    else ops.push(["+", b[j++]]);
  }
  while (i < n) ops.push(["-", a[i++]]);
  while (j < m) ops.push(["+", b[j++]]);
  return ops;
}
function diffLines(committed, proposed) {
  const a = JSON.stringify(sortedJson(committed ?? {}), null, 2).split("\n"), b = JSON.stringify(sortedJson(proposed ?? {}), null, 2).split("\n");
  if (a.join("\n") === b.join("\n")) return h("p", { class: "muted diff-none" }, "no difference from what is committed");
  const ops = diffOps(a, b);
  const near = ops.map((_, k) => ops.slice(Math.max(0, k - CONTEXT), k + CONTEXT + 1).some(([op]) => op !== " "));
  const lines = [];
  ops.forEach(([op, line], k) => {
    if (!near[k]) { if (lines.length && lines[lines.length - 1] !== "…") lines.push("…"); return; }
    lines.push(h("div", { class: op === "+" ? "diff-add" : op === "-" ? "diff-del" : "diff-same" }, `${op} ${line}`));
  });
  return h("pre", { class: "diff" }, lines.map((l) => l === "…" ? h("div", { class: "diff-gap muted" }, "  …") : l));
}

let chain = Promise.resolve();
function proposals(d, holder) {  // one after the other: each sees the cards the previous one drew
  holder.dataset.pending = Number(holder.dataset.pending || 0) + 1;
  const done = () => { holder.dataset.pending = Number(holder.dataset.pending) - 1; };
  chain = chain.then(() => drawProposals(d, holder), () => drawProposals(d, holder)).finally(done);
  return chain;
}

async function drawProposals(d, holder) {
  const droles = await get(`deployment_roles?deployment=${encodeURIComponent(d.name)}`);
  const items = droles.items || droles;
  // Cards already shown stay as they are (an edit in progress survives a new binding).
  const shown = new Map([...holder.querySelectorAll("[data-proposal]")].map((el) => [el.dataset.proposal, el]));
  const roles = await Promise.all(items.map((dr) => shown.has(dr.role) ? null : get(`roles/${encodeURIComponent(dr.role)}`)));
  holder.replaceChildren(...items.map((dr, i) => {
    if (shown.has(dr.role)) return shown.get(dr.role);
    const role = roles[i], data = JSON.parse(JSON.stringify(dr.proposed || {})), errors = new Map();
    const diff = h("div", {}, diffLines(dr.committed, dr.proposed));
    const saveError = h("p", { class: "field-error", "data-save-error": dr.role });
    const save = h("button", { class: "primary", "data-save": dr.role, onclick: async () => {
      saveError.textContent = "";
      try {
        const out = await api("PUT", `deployments/${encodeURIComponent(d.name)}/roles/${encodeURIComponent(dr.role)}`, { data });
        diff.replaceChildren(diffLines(out.committed, out.proposed)); toast(`${dr.role}: proposal saved`);
      } catch (e) { saveError.textContent = e.message; }
    } }, "Save proposal");
    const onChange = (attrib, value, msg) => {
      msg ? errors.set(attrib.name, msg) : errors.delete(attrib.name);
      if (!msg && value !== undefined) put(data, attrib.map, value);
      save.disabled = errors.size > 0;
      diff.replaceChildren(diffLines(dr.committed, data));
    };
    const attribs = (role.attribs || []);
    return h("div", { class: "card", "data-proposal": dr.role }, h("h3", {}, `Role ${dr.role}`),
      attribs.length ? h("form", { class: "filters", onsubmit: (ev) => ev.preventDefault() },
        attribs.map((a) => fieldFor(a, dig(data, a.map), onChange))) : h("p", { class: "muted" }, "this role has no attribs"),
      canChange() && attribs.length ? h("div", { class: "bar" }, save, saveError) : "", h("h3", {}, "Proposed against committed"), diff);
  }));
}

// -- a deployment --------------------------------------------------------------------------------------
route(/^\/deployments\/([^/?]+)$/, async (main, key) => {
  await loadVendor();
  let d = await get(`deployments/${encodeURIComponent(key)}`);
  const graphBox = h("div", { id: "graph", tabindex: "0", "aria-label": "noderole graph" });
  const panel = h("div", { class: "panel", id: "noderole-panel" }, h("p", { class: "muted" }, "Click a noderole to see its attributes, wall and runs."));
  const status = h("span", { id: "deployment-status" });
  const actions = h("div", { class: "bar" });
  const proposalBox = h("div", { id: "proposals" });
  const legend = h("p", { class: "legend" }, Object.keys(COLORS).map((s) => h("span", {}, badge(s))));
  main.replaceChildren(h("h1", {}, `Deployment ${d.name} `, status), actions,
    h("div", { class: "split" }, h("div", {}, legend, graphBox), panel), h("h2", {}, "Proposals"), proposalBox);

  const cy = window.cytoscape({ container: graphBox, wheelSensitivity: 0.3, minZoom: 0.2, maxZoom: 1.5,
    style: [
      { selector: "node.noderole", style: { "background-color": (e) => COLORS[e.data("state")] || "#999", label: "data(label)",
        color: "#1d2430", "font-size": 11, "text-valign": "bottom", "text-margin-y": 4, width: 22, height: 22,
        "border-width": 2, "border-color": "#fff" } },
      { selector: "node.noderole:selected", style: { "border-color": "#1d2430", "border-width": 4 } },
      { selector: "node.host", style: { "background-color": "#f0f3f7", "border-color": "#c5ccd6", "border-width": 1,
        label: "data(label)", "text-valign": "top", "font-size": 12, "font-weight": 600, color: "#4a5360", shape: "round-rectangle", padding: 14 } },
      { selector: "edge", style: { width: 1.5, "line-color": "#aab3bf", "target-arrow-color": "#aab3bf",
        "target-arrow-shape": "triangle", "curve-style": "bezier", "arrow-scale": 0.8 } }] });
  window.crowbarGraph = cy;  // for the browser tests and the curious
  let known = "", selectedId = Number(query().noderole) || null;
  let follower = null;

  async function refresh() {
    const items = await listAll(`node_roles?deployment=${d.id}&parents=true&limit=1000`, 5000);
    const shape = JSON.stringify(items.map((n) => [n.id, n.parents]));
    const ids = new Set(items.map((n) => n.id));
    if (shape !== known) {  // new noderoles or edges: rebuild and lay out again
      known = shape;
      const hosts = [...new Set(items.map((n) => n.node))];
      cy.elements().remove();
      cy.add(hosts.map((host) => ({ group: "nodes", data: { id: `host:${host}`, label: host }, classes: "host" })));
      cy.add(items.map((n) => ({ group: "nodes", data: { id: `nr:${n.id}`, nr: n.id, parent: `host:${n.node}`,
        label: n.role, state: n.state }, classes: "noderole" })));
      // edges from requires; a parent in another deployment is outside this graph
      cy.add(items.flatMap((n) => n.parents.filter((p) => ids.has(p)).map((p) => ({ group: "edges",
        data: { id: `e:${p}:${n.id}`, source: `nr:${p}`, target: `nr:${n.id}` } }))));
      cy.layout({ name: "elk", fit: true, padding: 20, nodeDimensionsIncludeLabels: true,
        elk: { algorithm: "layered", "elk.direction": "DOWN", "elk.hierarchyHandling": "INCLUDE_CHILDREN",
               "elk.layered.spacing.nodeNodeBetweenLayers": 40, "elk.spacing.nodeNode": 25 } }).run();
    } else {
      for (const n of items) cy.getElementById(`nr:${n.id}`).data("state", n.state);
    }
    graphBox.dataset.states = JSON.stringify(Object.fromEntries(items.map((n) => [n.id, n.state])));
    d = await get(`deployments/${d.id}`);
    status.replaceChildren(badge(d.status), ` ${d.state}`);
    drawActions(items);
    if (selectedId) { cy.getElementById(`nr:${selectedId}`).select(); }
  }

  let commitB = null, proposeB = null, count = 0;
  function drawActions(items) {
    count = items.length;
    if (commitB) {  // built once (a live refresh must not reset what the user is typing): only states change
      commitB.disabled = d.state === "committed" && !d.system; proposeB.disabled = d.state === "proposed";
      return;
    }
    if (!canChange()) { actions.replaceChildren(h("span", { class: "muted" }, "read-only: viewers change nothing")); return; }
    const roleSel = h("select", { name: "role", "aria-label": "role" });
    const nodeIn = h("input", { name: "node", placeholder: "node name", "aria-label": "node", list: "node-names" });
    listAll("roles", 2000).then((roles) => roleSel.replaceChildren(...roles.map((r) => h("option", { value: r.name }, r.name))));
    commitB = h("button", { id: "commit", class: "primary", disabled: d.state === "committed" && !d.system, onclick: async () => {
      if (!(await confirmList(`Commit ${d.name}?`, [`commit the proposed data of ${d.name}`, `the annealer then runs its ${count} noderoles`], "Commit"))) return;
      try { await api("POST", `deployments/${d.id}/commit`); toast(`${d.name} committed`); refresh(); } catch (e) { toast(e.message, true); }
    } }, "Commit");
    proposeB = h("button", { id: "propose", disabled: d.state === "proposed", onclick: async () => {
      try { await api("POST", `deployments/${d.id}/propose`); refresh(); } catch (e) { toast(e.message, true); }
    } }, "Propose");
    actions.replaceChildren(commitB, proposeB,
      h("form", { class: "bar", id: "bind", onsubmit: async (ev) => {
        ev.preventDefault();
        try { await api("POST", `deployments/${d.id}/bind`, { role: roleSel.value, node: nodeIn.value.trim() });
              toast(`bound ${roleSel.value} to ${nodeIn.value}`); await refresh(); await proposals(d, proposalBox); }
        catch (e) { toast(e.message, true); }
      } }, "Bind", roleSel, "to", nodeIn, h("button", {}, "Bind")));
  }

  async function showNoderole(id) {
    selectedId = id; setQuery({ noderole: id });
    const [nr, runs] = await Promise.all([get(`node_roles/${id}`), listAll(`node_roles/${id}/runs`, 200)]);
    const last = runs[runs.length - 1];
    // the run log streams while the run runs; the follower outlives the panel's redraws
    if (!follower || follower.id !== id) { if (follower) follower.stop(); follower = { id, ...runLogPanel(id) }; }
    panel.replaceChildren(h("h2", {}, `#${nr.id} ${nr.role} on `, h("a", { href: `#/nodes/${nr.node}` }, nr.node)),
      h("p", {}, badge(nr.state), ` ${nr.run_count} runs`, nr.status ? ` — ${nr.status}` : ""),
      canChange() && (nr.state === "error" || nr.state === "active") ? h("button", { id: "retry", class: "primary", onclick: async () => {
        try { await api("POST", `node_roles/${id}/retry`); toast(`noderole ${id} queued again`); } catch (e) { toast(e.message, true); }
      } }, "Retry") : "",
      follower.panel,
      h("h3", {}, "Attributes as the run saw them"), h("pre", { id: "run-attrs" }, last ? JSON.stringify(last.attrs, null, 2) : "–"),
      h("h3", {}, "Wall"), h("pre", { id: "wall" }, JSON.stringify(nr.wall, null, 2)),
      h("h3", {}, "Proposed / committed"), h("pre", {}, JSON.stringify({ proposed: nr.proposed, committed: nr.committed }, null, 2)),
      h("h3", {}, "Earlier runs"), table(["run", "state", "started", "finished"], runs.slice(0, -1).reverse().map((r) =>
        h("tr", {}, h("td", {}, r.id), h("td", {}, r.state), h("td", {}, fmtTime(r.started_at)), h("td", {}, fmtTime(r.finished_at))))));
  }

  cy.on("tap", "node.noderole", (ev) => showNoderole(ev.target.data("nr")));
  await refresh();
  await proposals(d, proposalBox);
  if (selectedId) await showNoderole(selectedId);
  liveRefresh((e) => e.object_type === "noderole" || e.object_type === "deployment", async () => {
    await refresh();
    if (selectedId) await showNoderole(selectedId);
  }, 250);
  onLeave(() => cy.destroy());
});
