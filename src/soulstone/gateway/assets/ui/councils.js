// Councils: the last runs, each persona's time and outcome.
import { clock, fill, h, ms } from "./dom.js";

const KEEP = 50;
let root, ctx, runs = [];

export function init(section, context) {
  root = section;
  ctx = context;
  ctx.onEvent((event) => {
    if (event.kind !== "council") return;
    runs.push(event);
    if (runs.length > KEEP) runs.shift();
    if (!root.hidden) render();
  });
}

export function show() {
  reload();
}

export async function reload() {
  try {
    const snapshot = await ctx.api("/api/councils");
    runs = snapshot.runs;
    render();
  } catch (error) {
    ctx.toast(`councils: ${error.message}`, true);
  }
}

function render() {
  if (!runs.length) {
    fill(root, h("div", { class: "card empty" }, "No council has run since the gateway started."));
    return;
  }
  fill(root, runs.slice().reverse().map((run) => {
    const slowest = Math.max(1, ...run.personas.map((p) => p.ms));
    return h("div", { class: "card", "data-council-run": run.id },
      h("h2", {}, `council/${run.council} `, h("span", { class: run.status >= 400 ? "bad" : "ok" }, String(run.status), run.code ? ` ${run.code}` : ""),
        h("span", { class: "muted" }, ` · ${ms(run.ms)} · ${run.client || "—"} · ${clock(run.at)} · `, h("span", { class: "mono" }, run.id))),
      run.personas.length
        ? run.personas.map((p) => h("div", { class: "persona-row", "data-persona": p.persona },
          h("b", {}, p.persona),
          h("div", { class: "persona-bar" }, bar(p, slowest)),
          h("span", { class: "num mono" }, ms(p.ms)),
          h("span", { class: p.outcome === "answered" ? "ok" : "bad" }, p.outcome)))
        : h("div", { class: "empty" }, "No persona was called."));
  }));
}

function bar(persona, slowest) {
  const el = h("i", { class: persona.outcome === "answered" ? "" : "failed" });
  el.style.width = `${Math.max(2, (100 * persona.ms) / slowest)}%`;
  return el;
}
