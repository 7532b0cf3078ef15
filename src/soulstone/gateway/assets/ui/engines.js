// Engines: every soulstone's state, groups, health, uptime, pid/unit, address, GPU memory,
// and the conflict graph (which soulstones exclude which) drawn as SVG.
import { bytes, fill, h, s, stateBadge, throttle, uptime } from "./dom.js";

const REFRESH_MS = 5000; // health and uptime while the page is shown
const COLORS = { running: "#3ecf8e", starting: "#f5b942", sleeping: "#5b8cff", stopping: "#f59542", stopped: "#6b7280", failed: "#f25f5c" };

let root, ctx, data = null, timer = null, ticker = null;
const reload = throttle(() => load(), 1000);

export function init(section, context) {
  root = section;
  ctx = context;
  ctx.onEvent((event) => {
    if (event.kind === "engine" && data) {
      const row = data.soulstones.find((x) => x.id === event.soulstone);
      if (row) { row.state = event.state; render(); }
    }
    if (event.kind === "engine" || event.kind === "swap") reload();
  });
}

export function show() {
  load();
  timer = setInterval(reload, REFRESH_MS);
  ticker = setInterval(tick, 1000);
}

export function hide() {
  clearInterval(timer);
  clearInterval(ticker);
}

export { reload };

async function load() {
  try {
    data = await ctx.api("/api/engines");
    render();
  } catch (error) {
    ctx.toast(`engines: ${error.message}`, true);
  }
}

function tick() {
  for (const cell of root.querySelectorAll("td[data-since]")) cell.textContent = uptime(Number(cell.dataset.since));
}

function actions(row) {
  if (!ctx.me.admin) return null;
  const active = row.state === "running" || row.state === "starting";
  return h("div", { class: "actions" },
    h("button", { "data-action": "up", disabled: active, onclick: () => act(row, "up") }, "Up"),
    h("button", { class: "danger", "data-action": "down", disabled: !active, onclick: () => act(row, "down") }, "Down"));
}

async function act(row, action) {
  const question = action === "up"
    ? `Start ${row.id}? Running soulstones that conflict with it are stopped first.`
    : `Stop ${row.id}? Its requests in flight finish first.`;
  const done = await ctx.act(question, `/api/engines/${encodeURIComponent(row.id)}/${action}`);
  if (done) load();
}

function render() {
  if (!data) return;
  const rows = data.soulstones.map((row) => h("tr", { "data-soulstone": row.id },
    h("td", {}, h("b", {}, row.id), h("div", { class: "muted mono" }, row.models.join(", "))),
    h("td", { class: "engine-state" }, stateBadge(row.state, row.state === "failed" && row.exit_code !== null ? `(exit ${row.exit_code})` : "")),
    h("td", {}, row.groups.length ? row.groups.map((g) => h("span", { class: "tag" }, g)) : h("span", { class: "muted" }, "solitary")),
    h("td", {}, row.health || "—"),
    h("td", { class: "num", "data-since": row.state === "running" || row.state === "starting" ? row.since_epoch || "" : "" },
      row.state === "running" || row.state === "starting" ? uptime(row.since_epoch) : "—"),
    h("td", { class: "mono" }, row.unit || row.pid || "—"),
    h("td", { class: "mono" }, row.socket || row.port || "—"),
    h("td", { class: "num" }, bytes(row.gpu_memory_bytes)),
    h("td", { class: "num" }, row.in_flight),
    h("td", {}, actions(row))));
  const running = data.soulstones.filter((x) => x.state === "running").length;
  fill(root,
    h("div", { class: "card" },
      h("div", { class: "stats" },
        h("div", { class: "stat" }, h("b", {}, data.soulstones.length), h("span", {}, "soulstones")),
        h("div", { class: "stat" }, h("b", {}, running), h("span", {}, "running")),
        h("div", { class: "stat" }, h("b", {}, data.groups.length), h("span", {}, "groups")),
        h("div", { class: "stat" }, h("b", {}, data.conflicts.length), h("span", {}, "conflicting pairs")))),
    h("div", { class: "card" }, h("h2", {}, "Engines"),
      h("table", { id: "engines-table" },
        h("thead", {}, h("tr", {}, ["soulstone", "state", "groups", "health", "uptime", "pid / unit", "port / socket", "GPU memory", "in flight", ""]
          .map((t, i) => h("th", { class: i >= 7 && i <= 8 ? "num" : null }, t)))),
        h("tbody", {}, rows))),
    h("div", { class: "card graph" }, h("h2", {}, "Conflict graph"), graph(),
      h("div", { class: "legend" },
        h("span", {}, h("i", { class: "edge-conflict-key" }), "conflict: never run together"),
        h("span", {}, h("i", { class: "edge-group-key" }), "share a group: may run together"))));
}

function graph() {
  const nodes = data.soulstones;
  const width = 760, height = nodes.length <= 2 ? 200 : 380, rx = 140, ry = 52;
  const cx = width / 2, cy = height / 2;
  const radiusX = nodes.length <= 2 ? 220 : width / 2 - rx / 2 - 20;
  const radiusY = nodes.length <= 2 ? 0 : height / 2 - ry / 2 - 14;
  const at = {};
  nodes.forEach((node, i) => {
    const angle = nodes.length === 1 ? 0 : (2 * Math.PI * i) / nodes.length + (nodes.length <= 2 ? 0 : -Math.PI / 2);
    at[node.id] = nodes.length === 1 ? [cx, cy] : [cx + radiusX * Math.cos(angle) * (nodes.length <= 2 ? -1 : 1), cy + radiusY * Math.sin(angle)];
  });
  const edges = [];
  const conflicting = new Set(data.conflicts.map(([a, b]) => `${a}|${b}`));
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const a = nodes[i], b = nodes[j];
      const key = a.id < b.id ? `${a.id}|${b.id}` : `${b.id}|${a.id}`;
      const [x1, y1] = at[a.id], [x2, y2] = at[b.id];
      if (conflicting.has(key)) {
        edges.push(s("line", { x1, y1, x2, y2, stroke: "#f25f5c", "stroke-width": 2, "stroke-dasharray": "7 5", class: "edge-conflict", "data-pair": key }));
      } else {
        const shared = a.groups.filter((g) => b.groups.includes(g));
        edges.push(s("line", { x1, y1, x2, y2, stroke: "#3ecf8e", "stroke-width": 2, class: "edge-group", "data-pair": key }));
        edges.push(s("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, shared.join(", ")));
      }
    }
  }
  const boxes = nodes.map((node) => {
    const [x, y] = at[node.id];
    const color = COLORS[node.state] || COLORS.stopped;
    return s("g", { class: "node", "data-soulstone": node.id, transform: `translate(${x - rx / 2},${y - ry / 2})` },
      s("rect", { width: rx, height: ry, rx: 10, fill: "#1e2230", stroke: color, "stroke-width": node.state === "running" ? 2.5 : 1.5 }),
      s("circle", { cx: 14, cy: 17, r: 5, fill: color }),
      s("text", { x: 26, y: 21, "font-weight": 600 }, node.id),
      s("text", { x: 12, y: 40, fill: "#9097ab" }, node.groups.length ? node.groups.join(" · ") : "solitary"));
  });
  return s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "conflict graph", id: "conflict-graph" }, edges, boxes);
}
