// The dashboard shell: who we are, the page router, the live feed, actions with confirmation.
import { fill, h } from "./dom.js";
import * as adapters from "./adapters.js";
import * as councils from "./councils.js";
import * as engines from "./engines.js";
import * as logs from "./logs.js";
import * as queue from "./queue.js";
import * as timeline from "./timeline.js";

const PAGES = { engines, timeline, queue, adapters, councils, logs };
const listeners = new Set();
const ctx = { me: null, seq: 0, api, act, onEvent, toast, current: null };

/** GET a JSON snapshot. */
async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new Error(await problem(response));
  return response.json();
}

async function problem(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

/** A state-changing call (admins only), after the user confirms it. */
async function act(question, path) {
  if (!(await confirmDialog(question))) return null;
  const response = await fetch(path, {
    method: "POST",
    headers: { "X-Soulstone-CSRF": ctx.me.csrf, Accept: "application/json" },
  });
  if (!response.ok) {
    toast(await problem(response), true);
    return null;
  }
  const body = await response.json();
  toast("done: " + JSON.stringify(body));
  return body;
}

function toast(text, error = false) {
  const el = h("div", { class: error ? "toast error" : "toast", role: "status" }, text);
  document.getElementById("toasts").append(el);
  setTimeout(() => el.remove(), error ? 9000 : 4000);
}

function onEvent(fn) {
  listeners.add(fn);
}

function setLive(on, text) {
  const el = document.getElementById("live");
  el.dataset.live = on ? "on" : "off";
  el.querySelector("span").textContent = text;
}

/** The live feed: EventSource reconnects by itself (the server sets `retry:`), resuming by id. */
function connect() {
  const source = new EventSource(`/api/events?since=${ctx.seq}`);
  source.onopen = () => setLive(true, "live");
  source.onerror = () => setLive(false, "reconnecting");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    ctx.seq = Math.max(ctx.seq, event.seq);
    for (const fn of listeners) {
      try { fn(event); } catch (error) { console.error(error); }
    }
  };
  source.addEventListener("reset", () => {
    for (const page of Object.values(PAGES)) page.reload && page.reload();
  });
}

function route() {
  const name = (location.hash || "#engines").slice(1);
  const page = PAGES[name] ? name : "engines";
  for (const [key, module] of Object.entries(PAGES)) {
    const section = document.getElementById(`page-${key}`);
    const shown = key === page;
    section.hidden = !shown;
    if (shown && ctx.current !== key) module.show();
    if (!shown && ctx.current === key && module.hide) module.hide();
  }
  ctx.current = page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.page = page;
}

async function start() {
  ctx.me = await api("/api/me");
  ctx.seq = ctx.me.seq;
  fill(document.getElementById("who"), h("span", {}, ctx.me.client), " ",
       h("span", { class: ctx.me.admin ? "role admin" : "role", id: "role" },
         ctx.me.admin ? "admin" : "view only"));
  document.body.dataset.admin = ctx.me.admin ? "yes" : "no";
  for (const [key, module] of Object.entries(PAGES)) module.init(document.getElementById(`page-${key}`), ctx);
  connect();
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "yes";
}

start().catch((error) => {
  document.querySelector("main").replaceChildren(h("div", { class: "card bad" }, String(error)));
});
