// Queue and limits: requests waiting per soulstone, slots in use, refusals by code by minute.
import { fill, h, s, throttle } from "./dom.js";

const REFRESH_MS = 2000; // while shown (never faster than once a second)
const PALETTE = ["#f25f5c", "#f5b942", "#8f7bff", "#5b8cff", "#3ecf8e", "#f59542", "#d16ba5", "#6bc5d1"];

let root, ctx, timer = null;
const reload = throttle(() => load(), 1000);

export function init(section, context) {
  root = section;
  ctx = context;
  ctx.onEvent((event) => {
    if (!root.hidden && (event.kind === "request" || event.kind === "swap")) reload();
  });
}

export function show() {
  load();
  timer = setInterval(reload, REFRESH_MS);
}

export function hide() {
  clearInterval(timer);
}

export { reload };

async function load() {
  try {
    render(await ctx.api("/api/queue"));
  } catch (error) {
    ctx.toast(`queue: ${error.message}`, true);
  }
}

function render(data) {
  const slots = data.slots;
  const totals = {};
  for (const minute of data.minutes) for (const [code, n] of Object.entries(minute.refusals)) totals[code] = (totals[code] || 0) + n;
  const codes = Object.keys(totals).sort();
  fill(root,
    h("div", { class: "card" }, h("div", { class: "stats" },
      h("div", { class: "stat", id: "slots-in-use" }, h("b", {}, `${slots.in_flight} / ${slots.limit}`), h("span", {}, "slots in use")),
      h("div", { class: "stat" }, h("b", {}, `${slots.waiting} / ${slots.queue}`), h("span", {}, "waiting for a slot")),
      h("div", { class: "stat" }, h("b", {}, data.soulstones.reduce((n, x) => n + x.waiting, 0)), h("span", {}, "waiting for an engine")),
      h("div", { class: "stat" }, h("b", {}, data.swaps), h("span", {}, "swaps")))),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Per soulstone"),
        h("table", { id: "queue-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "soulstone"), h("th", {}, "models"), h("th", {}, "engine"), h("th", { class: "num" }, "in flight"), h("th", { class: "num" }, "waiting"))),
          h("tbody", {}, data.soulstones.map((row) => h("tr", { "data-soulstone": row.id },
            h("td", {}, h("b", {}, row.id)), h("td", { class: "mono" }, row.models.join(", ")),
            h("td", {}, row.running ? "serving" : "not serving"),
            h("td", { class: "num" }, row.in_flight), h("td", { class: "num" }, row.waiting)))))),
      h("div", { class: "card" }, h("h2", {}, "Waves"),
        data.waves.length
          ? h("table", {}, h("tbody", {}, data.waves.map((wave, i) => h("tr", {},
            h("td", {}, `#${i + 1}`), h("td", {}, wave.soulstones.join(", ")),
            h("td", { class: "num" }, `${wave.waiting} waiting`), h("td", {}, wave.swapping ? "swapping now" : "queued")))))
          : h("div", { class: "empty" }, "No wave is waiting: every request goes to an engine that runs."))),
    h("div", { class: "card" }, h("h2", {}, "Requests and refusals by code, per minute (last 15 minutes)"),
      h("div", { class: "muted" }, "grey: every request settled that minute; colours: refusals by code"),
      h("div", { class: "bars" }, chart(data.minutes, codes)),
      codes.length
        ? h("table", { id: "refusals-table" }, h("tbody", {}, codes.map((code, i) => h("tr", {},
          h("td", {}, h("span", { class: "tag", "data-color": i }, "■"), " ", h("code", {}, code)), h("td", { class: "num" }, totals[code])))))
        : h("div", { class: "empty" }, "No refusals in the last 15 minutes.")));
  root.querySelectorAll("[data-color]").forEach((el) => { el.style.color = PALETTE[Number(el.dataset.color) % PALETTE.length]; });
}

function chart(minutes, codes) {
  const width = 1000, height = 190, left = 40, bottom = 24, top = 10;
  const peak = Math.max(1, ...minutes.map((m) => m.requests));
  const step = (width - left - 10) / minutes.length;
  const y = (n) => height - bottom - (n / peak) * (height - bottom - top);
  const parts = [s("line", { x1: left, x2: width - 10, y1: height - bottom, y2: height - bottom, stroke: "#2a2f40" }),
    s("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, String(peak)),
    s("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, "0")];
  minutes.forEach((minute, i) => {
    const x = left + i * step + 3;
    parts.push(s("rect", { x, width: step - 6, y: y(minute.requests), height: height - bottom - y(minute.requests), fill: "#262b3b" }));
    let base = 0;
    codes.forEach((code, c) => {
      const n = minute.refusals[code] || 0;
      if (!n) return;
      parts.push(s("rect", { x, width: step - 6, y: y(base + n), height: y(base) - y(base + n), fill: PALETTE[c % PALETTE.length] },
        s("title", {}, `${code}: ${n}`)));
      base += n;
    });
    if (i % 3 === 2 || i === minutes.length - 1) {
      const d = new Date(minute.minute * 1000);
      parts.push(s("text", { x: x + step / 2 - 3, y: height - 6, "text-anchor": "middle" },
        `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`));
    }
  });
  return s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "requests and refusals per minute" }, parts);
}
