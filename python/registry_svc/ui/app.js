// registry-svc dashboard. Plain JavaScript, no dependencies: the page asks for a token once
// (kept in sessionStorage, this tab only), calls the API with it, and polls every few
// seconds. Each view has a static part (headings, forms: rendered once per visit, so typing
// is never interrupted) and a live part, replaced only when its HTML changed, so nothing
// flickers and the scroll position stays.
"use strict";

const TOKEN_KEY = "registry-svc-token";
const POLL_MS = 2000;
const SYMBOLS = { Healthy: "✔", Unhealthy: "✖", Unknown: "?", Starting: "▲", Stopping: "■" };
const STATUSES = ["Healthy", "Unhealthy", "Unknown", "Starting", "Stopping"];
const NO_SLUG = "~none";

const state = { token: null, admin: false, nodes: false, current: "", live: "", seq: 0, timer: null };
const $ = (id) => document.getElementById(id);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function badge(status) {
  return `<span class="badge st-${esc(status)}">${SYMBOLS[status] || "•"} ${esc(status)}</span>`;
}

// A count in a status column: the column header names the status; symbol and colour repeat it.
function countBadge(status, n) {
  return `<span class="badge st-${esc(status)}" title="${n} ${esc(status)}">${SYMBOLS[status] || "•"} ${n}</span>`;
}

function ago(timestamp) {
  if (!timestamp) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(timestamp)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s ago`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m ago`;
}

// A model server's latest load reading (`load`, `loadAgeMs`), or "-" without one.
function loadOf(i) {
  const l = i.load;
  if (!l || l.queued == null) return '<span class="muted">-</span>';
  const age = i.loadAgeMs < 1000 ? `${i.loadAgeMs} ms` : `${(i.loadAgeMs / 1000).toFixed(1)} s`;
  return `${esc(l.queued)} queued · ${esc(l.running)} running · KV ${Math.round(100 * Number(l.kvCacheUsage))}%`
    + `<span class="sub">${esc(age)} old</span>`;
}

// A GPU's free memory in MiB: total less used and driver-reserved (as POST /nodes filters it).
function gpuFree(g) {
  if (g.memoryTotal == null || g.memoryUsage == null) return "?";
  return g.memoryTotal - g.memoryUsage - (g.memoryReserved || 0);
}

function bytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text }; }
  }
  if (resp.status === 401) {
    signOut("The server refused this token (revoked?). Sign in again.");
    throw new Unauthorized();
  }
  return { status: resp.status, data };
}

async function get(path) {
  const reply = await api("GET", path);
  if (reply.status !== 200) throw new Error(reply.data?.error || `HTTP ${reply.status}`);
  return reply.data;
}

// --- views --------------------------------------------------------------------------------

function table(headers, rows, empty) {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th scope="col"${h.num ? ' class="num"' : ""}>${esc(h.label ?? h)}</th>`).join("");
  return `<div class="scroll"><table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

const VIEWS = {
  services: {
    title: "Services",
    static: () => "<h1>Services</h1>",
    async live() {
      const [instances, definitions, routing] = await Promise.all([
        get("/registry-svc/instances"), get("/registry-svc/definitions"), get("/registry-svc/routing"),
      ]);
      const defined = new Set(definitions.definitions.map((d) => d.id));
      const bySlug = new Map();
      for (const inst of instances.instances) {
        const slug = inst.slug ?? NO_SLUG;
        if (!bySlug.has(slug)) bySlug.set(slug, Object.fromEntries(STATUSES.map((s) => [s, 0])));
        bySlug.get(slug)[inst.status] += 1;
      }
      const rows = [...bySlug.keys()].sort().map((slug) => {
        const counts = bySlug.get(slug);
        const total = STATUSES.reduce((sum, s) => sum + counts[s], 0);
        const name = slug === NO_SLUG ? '<span class="muted">(no slug)</span>' : esc(slug);
        // Own keys only: a slug named "constructor" is not the object's prototype's.
        const policy = Object.hasOwn(routing.slugPolicies, slug)
          ? esc(routing.slugPolicies[slug])
          : `${esc(routing.defaultPolicy)} <span class="muted">(default)</span>`;
        const cells = STATUSES.map((s) => `<td class="num">${counts[s] ? countBadge(s, counts[s]) : '<span class="muted">0</span>'}</td>`);
        return `<tr data-slug="${esc(slug)}"><td><a href="#/service/${encodeURIComponent(slug)}">${name}</a></td>`
          + `<td class="num">${total}</td>${cells.join("")}`
          + `<td>${defined.has(slug) ? "✔ yes" : '<span class="muted">— no</span>'}</td><td>${policy}</td></tr>`;
      });
      const headers = [{ label: "Slug" }, { label: "Instances", num: true },
        ...STATUSES.map((s) => ({ label: `${SYMBOLS[s]} ${s}`, num: true })), "Definition", "Routing"];
      return table(headers, rows, "No instances are registered yet.");
    },
  },

  service: {
    title: "Service",
    static: (slug) => `<h1>Service ${slug === NO_SLUG ? "(no slug)" : esc(slug)}</h1><p><a href="#/services">← all services</a></p>`,
    async live(slug) {
      const path = slug === NO_SLUG ? "/registry-svc/instances" : `/registry-svc/instances?slug=${encodeURIComponent(slug)}`;
      const instances = (await get(path)).instances.filter((i) => slug !== NO_SLUG || i.slug == null);
      const rows = instances.map((i) => {
        const actions = state.admin
          ? `<td><button type="button" data-action="drain" data-id="${esc(i.id)}"${i.status === "Stopping" ? " disabled" : ""}>Drain</button>
             <button type="button" class="danger" data-action="deregister" data-id="${esc(i.id)}">Deregister</button></td>`
          : "";
        const tags = (i.tags || []).map((t) => `<span>${esc(t)}</span>`).join("");
        return `<tr data-id="${esc(i.id)}"><td class="mono">${esc(i.id)}</td><td class="mono">${esc(i.url)}</td>`
          + `<td>${badge(i.status)}</td><td class="wrap">${esc(i.statusReason)}</td>`
          + `<td class="mono" title="${esc(i.nodeUrl)}">${esc((i.nodeUrl || "").replace(/^https?:\/\//, ""))}</td>`
          + `<td>${esc(i.zone)}</td><td class="chips">${tags}</td><td class="num">${esc(i.weight)}</td>`
          + `<td class="load">${loadOf(i)}</td><td>${esc(ago(i.lastHeartbeat))}</td>${actions}</tr>`;
      });
      const headers = ["ID", "URL", "Status", "Reason", "Node", "Zone", "Tags", { label: "Weight", num: true }, "Load", "Heartbeat"];
      if (state.admin) headers.push("Actions");
      return table(headers, rows, "This service has no instances.");
    },
  },

  nodes: {
    title: "Nodes",
    static: () => "<h1>Nodes</h1>",
    async live() {
      const reply = await api("POST", "/registry-svc/nodes");
      if (reply.status === 403) return '<p class="muted">This token may not list nodes.</p>';
      const rows = reply.data.nodes.map((n) => {
        const use = (part) => {
          const u = n.usage?.[part];
          if (!u) return "-";
          const used = part === "cpu" ? `${u.used} / ${u.total} cores` : `${bytes(u.used)} / ${bytes(u.total)}`;
          return `<meter min="0" max="100" value="${Number(u.percent) || 0}" title="${esc(u.percent)}%"></meter> ${esc(u.percent)}%`
            + `<span class="sub">${esc(used)}</span>`;
        };
        const gpus = (n.gpus || []).map((g) => `<span class="gpu">${esc(g.name)}: `
          + `<meter min="0" max="${Number(g.memoryTotal) || 1}" value="${Number(g.memoryUsage) || 0}"></meter> `
          + `${esc(gpuFree(g))} MiB free of ${esc(g.memoryTotal)}, ${esc(g.gpuUtilization)}% busy</span>`).join("");
        return `<tr data-node="${esc(n.url)}"><td class="mono">${esc(n.id)}</td><td class="mono">${esc(n.url)}</td>`
          + `<td>${badge(n.status)}</td><td>${esc(ago(n.lastHeartbeat))}</td><td>${esc(n.region)} ${esc(n.availabilityZone)}</td>`
          + `<td class="usage">${use("cpu")}</td><td class="usage">${use("memory")}</td><td class="usage">${use("disk")}</td>`
          + `<td class="wrap">${gpus || '<span class="muted">none</span>'}</td></tr>`;
      });
      return table(["ID", "URL", "Status", "Last heartbeat", "Region / zone", "CPU", "Memory", "Disk", "GPUs"], rows, "No nodes.");
    },
  },

  definitions: {
    title: "Definitions",
    static: () => "<h1>Definitions</h1>",
    async live() {
      const rows = (await get("/registry-svc/definitions")).definitions.map((d) => {
        const source = d.image ? `image ${esc(d.image.name)}` : `repository ${esc(d.repository?.url)}`;
        const ports = (d.ports || []).map((p) => `${p.host}:${p.internal}`)
          .concat((d.image || d.repository || {}).internalPorts || []).join(", ");
        return `<tr><td><a href="#/definition/${encodeURIComponent(d.id)}">${esc(d.id)}</a></td><td class="mono">${source}</td>`
          + `<td>${esc(ports)}</td><td class="num">${(d.envars || []).length}</td></tr>`;
      });
      return table(["ID", "Image or repository", "Ports", { label: "Env", num: true }], rows, "No definitions.");
    },
  },

  definition: {
    title: "Definition",
    static: (id) => `<h1>Definition ${esc(id)}</h1><p><a href="#/definitions">← all definitions</a></p>`,
    async live(id) {
      const reply = await api("GET", `/registry-svc/definition/${encodeURIComponent(id)}`);
      if (reply.status !== 200) return `<p class="error">${esc(reply.data?.error || `HTTP ${reply.status}`)}</p>`;
      return `<pre class="yaml">${esc(toYaml(reply.data.definition, 0))}</pre>`;
    },
  },

  tokens: {
    title: "Tokens",
    static: () => `<h1>Tokens</h1>
      <form id="create-token" class="card row">
        <label>Role <select name="role"><option>service</option><option>proxy</option><option>admin</option></select></label>
        <label>Slug (service tokens) <input name="slug" placeholder="user-svc"></label>
        <label>Description <input name="description" placeholder="what it is for"></label>
        <button type="submit" class="primary">Create token</button>
      </form>
      <div id="secret" aria-live="polite"></div>`,
    async live() {
      const reply = await api("GET", "/registry-svc/tokens");
      if (reply.status === 403) return '<p class="muted">Only an admin token may manage tokens.</p>';
      const rows = reply.data.tokens.map((t) => `<tr data-token="${esc(t.id)}"><td class="mono">${esc(t.id)}</td>`
        + `<td>${esc(t.role)}</td><td>${esc(t.slug)}</td><td class="wrap">${esc(t.description)}</td><td>${esc(t.createdAt)}</td>`
        + `<td><button type="button" class="danger" data-action="revoke" data-id="${esc(t.id)}">Revoke</button></td></tr>`);
      return table(["ID", "Role", "Slug", "Description", "Created", ""], rows, "No tokens.");
    },
  },
};

function toYaml(value, indent) {
  const pad = "  ".repeat(indent);
  const isNode = (v) => v !== null && typeof v === "object";
  const scalar = (v) => {
    if (v === null) return "null";
    if (typeof v !== "string") return String(v);
    const plain = /^[A-Za-z0-9_./@-][A-Za-z0-9_ ./@:-]*$/.test(v) && !/^(true|false|null|yes|no|on|off|~|[-+]?[0-9.]+)$/i.test(v);
    return plain ? v : JSON.stringify(v);
  };
  if (Array.isArray(value)) {
    if (!value.length) return `${pad}[]`;
    return value.map((item) => (isNode(item) ? `${pad}- ${toYaml(item, indent + 1).trimStart()}` : `${pad}- ${scalar(item)}`)).join("\n");
  }
  if (isNode(value)) {
    const keys = Object.keys(value);
    if (!keys.length) return `${pad}{}`;
    return keys.map((key) => {
      const item = value[key];
      const empty = isNode(item) && !(Array.isArray(item) ? item.length : Object.keys(item).length);
      if (isNode(item) && !empty) return `${pad}${key}:\n${toYaml(item, indent + 1)}`;
      return `${pad}${key}: ${empty ? (Array.isArray(item) ? "[]" : "{}") : scalar(item)}`;
    }).join("\n");
  }
  return `${pad}${scalar(value)}`;
}

// --- navigation, polling, actions ----------------------------------------------------------

function route() {
  const [view, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const name = VIEWS[view] ? view : "services";
  return { name, arg: decodeURIComponent(rest.join("/")) };
}

async function refresh() {
  if (!state.token) return;
  const { name, arg } = route();
  const key = `${name}/${arg}`;
  const seq = ++state.seq;
  if (key !== state.current) {
    state.current = key;
    state.live = "";
    $("view").innerHTML = `<div id="static">${VIEWS[name].static(arg)}</div><div id="live"></div>`;
    document.title = `${VIEWS[name].title} · registry-svc`;
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("active", link.dataset.view === name || (name === "service" && link.dataset.view === "services")
        || (name === "definition" && link.dataset.view === "definitions"));
    }
  }
  try {
    const html = await VIEWS[name].live(arg);
    if (seq !== state.seq || !state.token) return; // a newer refresh, or signed out, meanwhile
    if (html !== state.live) {
      $("live").innerHTML = html;
      state.live = html;
    }
    $("status").textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("status").textContent = `Could not refresh: ${err.message}`;
  }
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(refresh, POLL_MS);
}

async function act(action, id) {
  if (action === "drain") {
    await api("PUT", `/registry-svc/instance/${encodeURIComponent(id)}/heartbeat`, { status: "Stopping" });
  } else if (action === "deregister") {
    if (!confirm(`Deregister instance ${id}?`)) return;
    await api("DELETE", `/registry-svc/instance/${encodeURIComponent(id)}`);
  } else if (action === "revoke") {
    if (!confirm(`Revoke token ${id}? Clients using it are refused at once.`)) return;
    const reply = await api("DELETE", `/registry-svc/token/${encodeURIComponent(id)}`);
    if (reply.status !== 204) $("status").textContent = reply.data?.error || `HTTP ${reply.status}`;
  }
  await refresh();
}

async function createToken(form) {
  const body = { role: form.role.value, description: form.description.value };
  if (form.slug.value) body.slug = form.slug.value;
  const reply = await api("POST", "/registry-svc/tokens", body);
  const box = $("secret");
  if (reply.status !== 201) {
    box.innerHTML = `<p class="error">${esc(reply.data?.error || `HTTP ${reply.status}`)}</p>`;
    return;
  }
  box.innerHTML = `<div class="card"><p><strong>Token ${esc(reply.data.info.id)}</strong> (${esc(reply.data.info.role)}):
    copy the secret now; it is shown only once.</p><p class="secret mono">${esc(reply.data.token)}</p></div>`;
  form.reset();
  await refresh();
}

async function signIn(token) {
  state.token = token;
  const probe = await fetch("/registry-svc/instances", { headers: { Authorization: `Bearer ${token}` } });
  if (probe.status !== 200) {
    state.token = null;
    const data = await probe.json().catch(() => ({}));
    $("login-error").textContent = data.error || `HTTP ${probe.status}`;
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.admin = (await api("GET", "/registry-svc/tokens")).status === 200;
  state.nodes = (await api("POST", "/registry-svc/nodes")).status === 200;
  for (const link of document.querySelectorAll("nav a[data-needs]")) {
    link.hidden = (link.dataset.needs === "admin" && !state.admin) || (link.dataset.needs === "nodes" && !state.nodes);
  }
  $("who").textContent = state.admin ? "admin token" : state.nodes ? "proxy token" : "service token";
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  state.current = "";
  await refresh();
  schedule();
  return true;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, admin: false, nodes: false, current: "", live: "" });
  clearInterval(state.timer);
  $("view").innerHTML = "";
  $("status").textContent = "";
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (await signIn(token)) $("token").value = "";
  });
  $("logout").addEventListener("click", () => signOut());
  $("view").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) act(button.dataset.action, button.dataset.id);
  });
  $("view").addEventListener("submit", (event) => {
    if (event.target.id === "create-token") {
      event.preventDefault();
      createToken(event.target);
    }
  });
  window.addEventListener("hashchange", refresh);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).then((ok) => { if (!ok) signOut("The saved token no longer works. Sign in again."); });
  } else {
    signOut();
  }
});
