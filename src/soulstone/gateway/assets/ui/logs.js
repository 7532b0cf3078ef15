// Logs: one engine's log, following live (server-sent events; admin clients only).
import { fill, h } from "./dom.js";

const KEEP = 3000; // lines kept on the page

let root, ctx, select, follow, pre, source = null, names = [];

export function init(section, context) {
  root = section;
  ctx = context;
  if (!ctx.me.admin) {
    fill(root, h("div", { class: "card empty" },
      "Engine logs can hold what clients asked, so only admin clients read them here."));
    return;
  }
  select = h("select", { id: "log-soulstone", onchange: restart });
  follow = h("input", { type: "checkbox", id: "log-follow", checked: true, onchange: restart });
  pre = h("pre", { class: "log", id: "log-view" });
  fill(root, h("div", { class: "card" },
    h("div", { class: "logbar" }, h("h2", {}, "Logs"), select,
      h("label", {}, follow, " follow"), h("span", { class: "muted", id: "log-status" }, "")),
    pre));
}

export async function show() {
  if (!ctx.me.admin) return;
  try {
    const engines = await ctx.api("/api/engines");
    const ids = engines.soulstones.map((x) => x.id);
    if (ids.join() !== names.join()) {
      const keep = select.value;
      names = ids;
      fill(select, ids.map((id) => h("option", { value: id }, id)));
      if (ids.includes(keep)) select.value = keep;
    }
  } catch (error) {
    ctx.toast(`logs: ${error.message}`, true);
  }
  restart();
}

export function hide() {
  stop();
}

function stop() {
  if (source) {
    source.close();
    source = null;
  }
}

function status(text) {
  root.querySelector("#log-status").textContent = text;
}

function restart() {
  stop();
  const id = select.value;
  if (!id) return;
  const url = `/api/logs/${encodeURIComponent(id)}?lines=200`;
  source = new EventSource(url);
  root.dataset.following = id;
  source.onopen = () => { pre.replaceChildren(); status(follow.checked ? "following" : "last lines"); };
  source.onerror = () => status(follow.checked ? "reconnecting" : "");
  source.onmessage = (message) => {
    const { line } = JSON.parse(message.data);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    pre.append(h("div", { class: "line" }, line));
    while (pre.children.length > KEEP) pre.firstChild.remove();
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  if (!follow.checked) {
    // the last lines only: stop once they have arrived
    setTimeout(() => { if (!follow.checked) { stop(); status("not following"); } }, 1500);
  }
}
