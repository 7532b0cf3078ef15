// Timeline: requests, swaps, engine states, adapters and council runs as they happen.
import { clock, fill, h, ms, s, throttle } from "./dom.js";

const KEEP = 500; // rows kept on the page
const WINDOW_S = 180; // the activity strip's span
const KINDS = ["request", "swap", "engine", "adapter", "council"];

let root, ctx, list, strip, events = [], shown = false, slide = null;
const hidden = new Set();
const redrawStrip = throttle(() => drawStrip(), 1000);

export function init(section, context) {
  root = section;
  ctx = context;
  ctx.onEvent((event) => {
    events.push(event);
    if (events.length > KEEP) events.shift();
    if (list) {
      list.prepend(row(event));
      while (list.children.length > KEEP) list.lastChild.remove();
      empty();
    }
    if (shown) redrawStrip();
  });
  build();
  reload();
}

export function show() {
  shown = true;
  drawStrip();
  slide = setInterval(drawStrip, 5000);
}

export function hide() {
  shown = false;
  clearInterval(slide);
}

export async function reload() {
  try {
    const snapshot = await ctx.api("/api/timeline");
    const seen = new Set(events.map((e) => e.seq));
    events = snapshot.events.filter((e) => !seen.has(e.seq)).concat(events).sort((a, b) => a.seq - b.seq).slice(-KEEP);
    fill(list, events.slice().reverse().map(row));
    empty();
    drawStrip();
  } catch (error) {
    ctx.toast(`timeline: ${error.message}`, true);
  }
}

function build() {
  list = h("ol", { class: "timeline", id: "timeline" });
  strip = h("div", { class: "strip" });
  const filters = h("div", { class: "filters" }, KINDS.map((kind) => h("label", {},
    h("input", { type: "checkbox", checked: true, onchange: (e) => toggle(kind, e.target.checked) }), ` ${kind}s`)));
  fill(root,
    h("div", { class: "card" }, h("h2", {}, "Activity"), h("div", { class: "muted" }, `the last ${WINDOW_S / 60} minutes: requests by model, swaps as purple lines`), strip),
    h("div", { class: "card" }, h("h2", {}, "Timeline"), filters, h("div", { class: "empty", id: "timeline-empty" }, "Nothing has happened yet."), list));
}

function toggle(kind, on) {
  if (on) hidden.delete(kind); else hidden.add(kind);
  for (const item of list.children) item.hidden = hidden.has(item.dataset.kind);
}

function empty() {
  root.querySelector("#timeline-empty").hidden = list.children.length > 0;
}

function names(ids) {
  return ids.length ? ids.join(", ") : "nothing";
}

function describe(event) {
  switch (event.kind) {
    case "request": {
      const failed = event.status >= 400 || event.code;
      return [h("b", {}, event.model || "—"), " ",
        h("span", { class: failed ? "bad" : "ok" }, String(event.status), event.code ? ` ${event.code}` : ""),
        " · ", ms(event.ms), " · ", event.client || "—",
        event.persona ? ` · ${event.council}/${event.persona}` : "", " ", h("span", { class: "muted mono" }, event.id)];
    }
    case "swap":
      return [event.stopped.length ? "swap: stopped " : "started ",
        event.stopped.length ? h("span", { class: "stopped-list", "data-role": "stopped" }, names(event.stopped)) : "",
        event.stopped.length ? " → started " : "",
        h("span", { class: "started-list", "data-role": "started" }, names(event.started)),
        ` in ${event.seconds.toFixed(2)} s`];
    case "engine":
      return [h("b", {}, event.soulstone), " ", event.state, event.seconds ? ` after ${event.seconds.toFixed(2)} s` : "",
        event.detail ? h("span", { class: "muted" }, ` — ${event.detail}`) : ""];
    case "adapter":
      return [`${event.action} `, h("b", {}, event.adapter), ` on ${event.soulstone}`];
    case "council":
      return [h("b", {}, `council/${event.council}`), " ",
        h("span", { class: event.status >= 400 ? "bad" : "ok" }, String(event.status), event.code ? ` ${event.code}` : ""),
        ` · ${event.personas.length} persona calls · `, ms(event.ms)];
    default:
      return [JSON.stringify(event)];
  }
}

function row(event) {
  const item = h("li", { "data-kind": event.kind, "data-seq": event.seq, "data-id": event.id || null },
    h("time", {}, clock(event.at)), h("span", { class: `kind kind-${event.kind}` }, event.kind), h("div", {}, describe(event)));
  item.hidden = hidden.has(event.kind);
  return item;
}

function drawStrip() {
  if (!strip) return;
  const now = Date.now() / 1000;
  const recent = events.filter((e) => e.at >= now - WINDOW_S);
  const models = [...new Set(recent.filter((e) => e.kind === "request").map((e) => e.model || "—"))].sort();
  const lanes = models.length ? models : ["—"];
  const width = 1000, left = 150, lane = 26, top = 8, height = top + lanes.length * lane + 22;
  const x = (t) => left + ((t - (now - WINDOW_S)) / WINDOW_S) * (width - left - 10);
  const parts = [];
  lanes.forEach((name, i) => {
    const y = top + i * lane + lane / 2;
    parts.push(s("line", { x1: left, x2: width - 10, y1: y, y2: y, stroke: "#2a2f40" }));
    parts.push(s("text", { x: left - 10, y: y + 4, "text-anchor": "end" }, name));
  });
  for (const event of recent) {
    if (event.kind === "swap") {
      parts.push(s("line", { x1: x(event.at), x2: x(event.at), y1: top, y2: top + lanes.length * lane, stroke: "#8f7bff", "stroke-width": 2 }));
    } else if (event.kind === "request") {
      const y = top + lanes.indexOf(event.model || "—") * lane + lane / 2;
      const bad = event.status >= 400 || event.code;
      parts.push(s("circle", { cx: x(event.at), cy: y, r: 4.5, fill: bad ? "#f25f5c" : "#5b8cff", opacity: 0.85 }));
    }
  }
  for (let back = 0; back <= WINDOW_S; back += 60) {
    parts.push(s("text", { x: x(now - back), y: height - 4, "text-anchor": "middle" }, back ? `-${back / 60} min` : "now"));
  }
  fill(strip, s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "activity" }, parts));
}
