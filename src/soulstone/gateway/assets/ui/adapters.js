// Adapters: cold / warm / hot per soulstone, loads and evictions; admins load and unload.
import { clock, fill, h, stateBadge, throttle } from "./dom.js";

let root, ctx;
const reload = throttle(() => load(), 1000);

export function init(section, context) {
  root = section;
  ctx = context;
  ctx.onEvent((event) => {
    if (!root.hidden && (event.kind === "adapter" || event.kind === "engine")) reload();
  });
}

export function show() {
  load();
}

export { reload };

async function load() {
  try {
    render(await ctx.api("/api/adapters"));
  } catch (error) {
    ctx.toast(`adapters: ${error.message}`, true);
  }
}

async function act(name, action) {
  const question = action === "load"
    ? `Load ${name} into its engine? The engine is started first when it is not running, and the least recently used idle adapter may be evicted.`
    : `Unload ${name} from its engine?`;
  if (await ctx.act(question, `/api/adapters/${encodeURIComponent(name)}/${action}`)) load();
}

function render(data) {
  if (!data.enabled) {
    fill(root, h("div", { class: "card empty" }, "This gateway runs without an adapter registry."));
    return;
  }
  const cards = data.soulstones.map((soulstone) => h("div", { class: "card", "data-soulstone": soulstone.id },
    h("h2", {}, soulstone.id, " ", h("span", { class: "muted" },
      soulstone.max_loras ? `${soulstone.hot.length} / ${soulstone.max_loras} hot` : "no run-time adapters",
      soulstone.running ? "" : " · engine stopped")),
    soulstone.adapters.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "adapter"), h("th", { class: "num" }, "rank"), h("th", {}, "state"), h("th", {}, ""))),
        h("tbody", {}, soulstone.adapters.map((adapter) => h("tr", { "data-adapter": adapter.name },
          h("td", {}, h("b", {}, adapter.name)), h("td", { class: "num" }, adapter.rank),
          h("td", {}, stateBadge(adapter.state)),
          h("td", {}, ctx.me.admin ? h("div", { class: "actions" },
            h("button", { "data-action": "load", disabled: adapter.state === "hot", onclick: () => act(adapter.name, "load") }, "Load"),
            h("button", { class: "danger", "data-action": "unload", disabled: adapter.state !== "hot", onclick: () => act(adapter.name, "unload") }, "Unload")) : null)))))
      : h("div", { class: "empty" }, "No adapters registered for this soulstone.")));
  fill(root,
    h("div", { class: "card" }, h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", {}, data.soulstones.reduce((n, x) => n + x.adapters.length, 0)), h("span", {}, "adapters")),
      h("div", { class: "stat" }, h("b", {}, data.soulstones.reduce((n, x) => n + x.hot.length, 0)), h("span", {}, "hot now")),
      h("div", { class: "stat" }, h("b", {}, data.loads), h("span", {}, "loads")),
      h("div", { class: "stat" }, h("b", {}, data.evictions), h("span", {}, "evictions")))),
    cards.length ? h("div", { class: "grid" }, cards) : h("div", { class: "card empty" }, "No soulstone takes adapters (a `lora` table in the codex)."),
    h("div", { class: "card" }, h("h2", {}, "Loads and evictions"),
      data.recent.length
        ? h("ol", { class: "timeline" }, data.recent.slice().reverse().map((event) => h("li", {},
          h("time", {}, clock(event.at)), h("span", { class: "kind kind-adapter" }, event.action),
          h("div", {}, h("b", {}, event.adapter), ` on ${event.soulstone}`))))
        : h("div", { class: "empty" }, "None yet.")));
}
