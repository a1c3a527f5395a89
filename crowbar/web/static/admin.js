// Users (admins) and API tokens (everyone: their own; admins: everyone's), over /api/v2/users and
// /api/v2/tokens like `crowbar users` and `crowbar tokens`. A token's secret is shown once, when it
// is created or rotated: the server keeps only its hash.
import { api, get, h, toast, confirmList, listAll, route, query, setQuery, state, fmtTime, badge } from "./kit.js";
import { table } from "./pages.js";

const ROLES = ["viewer", "operator", "admin"];
const EXPIRY = [["1 day", 86400], ["30 days", 30 * 86400], ["90 days", 90 * 86400], ["1 year", 365 * 86400], ["never", null]];

// The secret of a new or rotated token, with the one warning that matters.
function secretCard(box, what, token) {
  const field = h("input", { id: "new-secret", readonly: true, value: token.token, size: 60, "aria-label": "the token's secret" });
  box.replaceChildren(h("div", { class: "card secret", role: "alert" },
    h("h3", {}, `${what} ${token.user}/${token.name}`),
    h("p", {}, "Copy the secret now: it is not shown again (the server keeps only its hash)."),
    h("div", { class: "bar" }, field, h("button", { onclick: async () => {
      field.select();
      try { await navigator.clipboard.writeText(token.token); toast("copied"); } catch (e) { toast("select the text and copy it", true); }
    } }, "Copy"), h("button", { onclick: () => box.replaceChildren() }, "Done"))));
  field.focus(); field.select();
}

// -- users (admins only: the API refuses the others, and the page says so) ------------------------------------
route(/^\/users$/, async (main) => {
  if (state.role !== "admin") {
    main.replaceChildren(h("h1", {}, "Users"), h("p", { class: "muted" }, "Only admins manage users. Your own tokens: ",
      h("a", { href: "#/tokens" }, "Tokens"), "."));
    return;
  }
  const holder = h("div");
  const name = h("input", { name: "name", required: true, maxlength: 64, pattern: "[a-z][a-z0-9._\\-]*", placeholder: "e.g. alice",
                            "aria-label": "name" });
  const role = h("select", { name: "role", "aria-label": "role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const desc = h("input", { name: "description", maxlength: 500, placeholder: "who or what it is for", "aria-label": "description" });
  const form = h("form", { class: "filters", id: "create-user", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const u = await api("POST", "users", { name: name.value.trim(), role: role.value, description: desc.value });
      toast(`user ${u.name} created (${u.role})`); name.value = desc.value = ""; await load();
    } catch (e) { toast(e.message, true); }
  } }, h("label", {}, "Name", name), h("label", {}, "Role", role), h("label", {}, "Description", desc), h("button", { class: "primary" }, "Create user"));
  main.replaceChildren(h("h1", {}, "Users"), h("p", { class: "muted" },
    "Viewers read everything and change nothing; operators change nodes and deployments; admins also manage users."), form, holder);

  async function load() {
    const users = await listAll("users", 5000);
    holder.replaceChildren(table(["user", "role", "description", "API tokens", "created", ""], users.map((u) => {
      const sel = h("select", { "aria-label": `role of ${u.name}`, "data-role-of": u.name, onchange: async () => {
        const to = sel.value;
        if (!(await confirmList(`Change ${u.name}'s role?`, [`${u.name}: ${u.role} → ${to}`, "it applies to every token of the user at once"], "Change"))) {
          sel.value = u.role; return;
        }
        try { await api("PATCH", `users/${encodeURIComponent(u.name)}`, { role: to }); toast(`${u.name} is now ${to}`); }
        catch (e) { toast(e.message, true); }
        await load();
      } }, ROLES.map((r) => h("option", { value: r, selected: r === u.role }, r)));
      return h("tr", { "data-user": u.name }, h("td", {}, u.name), h("td", {}, sel), h("td", {}, u.description || ""),
        h("td", {}, h("a", { href: `#/tokens?user=${encodeURIComponent(u.name)}` }, u.tokens ?? "tokens")), h("td", {}, fmtTime(u.created_at)),
        h("td", {}, u.name === state.user ? h("span", { class: "muted" }, "you") : h("button", { class: "danger", "data-delete-user": u.name,
          onclick: async () => {
            if (!(await confirmList(`Delete user ${u.name}?`, [`delete ${u.name} (${u.role})`, "revoke its tokens: they stop working at once"], "Delete"))) return;
            try { await api("DELETE", `users/${encodeURIComponent(u.name)}`); toast(`user ${u.name} deleted`); } catch (e) { toast(e.message, true); }
            await load();
          } }, "Delete")));
    }), { id: "users" }));
  }
  await load();
});

// -- tokens ----------------------------------------------------------------------------------------------------------
route(/^\/tokens$/, async (main) => {
  const admin = state.role === "admin";
  const q = query();
  const whose = admin ? (q.user || "") : state.user;
  const me = await get("whoami");
  const holder = h("div"), secretBox = h("div", { id: "secret-box" });
  const name = h("input", { name: "name", required: true, maxlength: 64, placeholder: "e.g. laptop", "aria-label": "token name" });
  const expiry = h("select", { name: "expires_in", "aria-label": "expires in" },
    EXPIRY.map(([label, seconds]) => h("option", { value: seconds ?? "never", selected: seconds === 90 * 86400 }, label)));
  const user = admin ? h("input", { name: "user", value: whose, maxlength: 64, placeholder: state.user, "aria-label": "for user" }) : null;
  const form = h("form", { class: "filters", id: "create-token", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), expires_in: expiry.value === "never" ? null : Number(expiry.value) };
    if (user && user.value.trim()) body.user = user.value.trim();
    try {
      const t = await api("POST", "tokens", body);
      name.value = ""; secretCard(secretBox, "New token", t); await load();
    } catch (e) { toast(e.message, true); }
  } }, h("label", {}, "Name", name), h("label", {}, "Expires in", expiry), user ? h("label", {}, "For user", user) : "",
  h("button", { class: "primary" }, "Create token"));
  const filterIn = h("input", { name: "user", value: whose, maxlength: 64, placeholder: "everyone", "aria-label": "show the tokens of" });
  const filter = admin ? h("form", { class: "filters", id: "token-filter", onsubmit: (ev) => {
    ev.preventDefault(); setQuery({ user: filterIn.value.trim() }); shown = filterIn.value.trim(); load();
  } }, h("label", {}, "Tokens of user", filterIn), h("button", {}, "Show")) : "";
  let shown = whose;
  main.replaceChildren(h("h1", {}, "API tokens"), h("p", { class: "muted" },
    "Tokens sign in the CLI, scripts and this UI (a UI session is a token named ui-session.…). ",
    admin ? "As an admin you see and manage everyone's." : "You see and manage your own."), form, secretBox, filter, holder);

  async function load() {
    const tokens = await listAll(shown ? `tokens?user=${encodeURIComponent(shown)}` : "tokens", 5000);
    holder.replaceChildren(table(["user", "token", "created", "rotated", "expires", ""], tokens.map((t) => {
      const current = t.id === me.token.id;
      return h("tr", { "data-token": `${t.user}/${t.name}` }, h("td", {}, t.user),
        h("td", {}, t.name, current ? h("span", { class: "muted" }, " (this session)") : ""),
        h("td", {}, fmtTime(t.created_at)), h("td", {}, fmtTime(t.rotated_at)),
        h("td", {}, t.expired ? badge("expired") : t.expires_at ? fmtTime(t.expires_at) : "never"),
        h("td", {}, current ? "" : h("span", { class: "bar" },
          h("button", { "data-rotate": t.id, onclick: async () => {
            if (!(await confirmList(`Rotate ${t.user}/${t.name}?`, ["a new secret is made and shown once", "the old secret is refused from now on"], "Rotate"))) return;
            try { secretCard(secretBox, "Rotated token", await api("POST", `tokens/${t.id}/rotate`, { expires_in: 90 * 86400 })); }
            catch (e) { toast(e.message, true); }
            await load();
          } }, "Rotate"),
          h("button", { class: "danger", "data-revoke": t.id, onclick: async () => {
            if (!(await confirmList(`Revoke ${t.user}/${t.name}?`, ["whatever uses it is refused from now on"], "Revoke"))) return;
            try { await api("DELETE", `tokens/${t.id}`); toast(`token ${t.user}/${t.name} revoked`); } catch (e) { toast(e.message, true); }
            await load();
          } }, "Revoke"))));
    }), { id: "tokens" }));
  }
  await load();
});
