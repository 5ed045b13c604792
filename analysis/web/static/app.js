// autoevolve web view: the shell shared by every page (fetching, formatting, the live stream).
// Plain scripts, no build step. Data is only ever put in the page with textContent, never as HTML.
"use strict";

const AE = (window.autoevolve = {
  pages: {}, // name -> {deps: [state keys it shows], render(main, first)}
  page: { "/": "overview", "/progress": "progress", "/tree": "tree", "/transfer": "transfer", "/operators": "operators" }[location.pathname] || "overview",
  run: null,
  runs: null,
  state: null,
  renders: 0, // how many times the page drew itself (tests read it)
  loadedAt: Date.now(),
});

AE.api = async function (path, params = {}) {
  const url = new URL(path, location.origin);
  if (AE.run) url.searchParams.set("run", AE.run);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
};

// el("td", {class: "num", onclick: f}, "text", childNode, ...)
AE.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

AE.fmt = {
  num(v, digits = 6) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); },
  signed(v, digits = 6) { return v === null || v === undefined ? "–" : (v > 0 ? "+" : "") + Number(v).toFixed(digits); },
  pct(v) { return v === null || v === undefined ? "–" : `${Math.round(100 * v)}%`; },
  int(v) { return v === null || v === undefined ? "–" : String(Math.round(v)); },
  usd(v) { return v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`; },
  score(mean, std, n) {
    if (mean === null || mean === undefined) return "–";
    return `${Number(mean).toFixed(6)} ± ${Number(std || 0).toFixed(4)} (n=${n})`;
  },
  seconds(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : m ? `${m} min ${r} s` : `${r} s`;
  },
  time(epoch) { return epoch ? new Date(epoch * 1000).toLocaleString() : "–"; },
  bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
  },
  count(n) { return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}K` : String(Math.round(n || 0)); },
};

AE.badge = (text) => AE.el("span", { class: `badge ${String(text || "").replace(/\s+/g, "-")}` }, text || "–");

AE.link = function (id) {
  const href = `/tree?run=${encodeURIComponent(AE.run || "")}#${encodeURIComponent(id)}`;
  return AE.el("a", { href, class: "ind", dataset: { id } }, id);
};

// A table from a header and rows of cells; a cell is text, a Node, or {v, num: true}.
AE.table = function (head, rows, cls) {
  const cell = (tag, c) => {
    if (c && typeof c === "object" && !(c instanceof Node)) return AE.el(tag, { class: c.num ? "num" : c.cls }, c.v);
    return AE.el(tag, {}, c);
  };
  return AE.el("table", { class: cls },
    AE.el("thead", {}, AE.el("tr", {}, head.map((h) => cell("th", h)))),
    AE.el("tbody", {}, rows.map((r) => (r instanceof Node ? r : AE.el("tr", {}, r.map((c) => cell("td", c)))))));
};

// A diff as coloured lines (text nodes only).
AE.diff = function (text) {
  const pre = AE.el("pre", { class: "diff" });
  for (const line of String(text || "").split("\n")) {
    const cls = line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ") ? "meta"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : null;
    pre.append(AE.el("span", { class: cls }, line), "\n");
  }
  return pre;
};

AE.empty = function (main, text) {
  main.replaceChildren(AE.el("p", { class: "note" }, text));
};

// --- drawing the page, and redrawing it when the part of the store it shows changes ----------

let drawing = null;
let again = false;

AE.refresh = async function (first = false) {
  if (drawing) { again = true; return drawing; }
  const page = AE.pages[AE.page];
  const main = document.getElementById("main");
  drawing = (async () => {
    try {
      if (!AE.runs || !AE.runs.store) {
        AE.empty(main, `No store in this workspace yet: the view fills in once \`evolve run\` starts here (${AE.runs ? AE.runs.workspace : ""}).`);
      } else if (!AE.run) {
        AE.empty(main, "No run in this store yet.");
      } else {
        await page.render(main, first);
        if (!AE.firstDraw) AE.firstDraw = performance.now(); // ms from opening the page (bench/web_scale.py)
      }
      AE.renders += 1;
      document.getElementById("footer").textContent = `updated ${new Date().toLocaleTimeString()} · read-only view of ${AE.runs ? AE.runs.workspace : "?"}`;
    } catch (err) {
      main.replaceChildren(AE.el("p", { class: "error" }, `Could not draw this page: ${err.message}`));
    } finally {
      drawing = null;
    }
  })();
  await drawing;
  if (again) { again = false; await AE.refresh(false); }
};

AE.loadRuns = async function () {
  AE.runs = await AE.api("/api/runs");
  const wanted = new URLSearchParams(location.search).get("run");
  const names = AE.runs.runs.map((r) => r.name);
  AE.run = names.includes(wanted) ? wanted : AE.runs.default || null;
  const select = document.getElementById("run");
  select.replaceChildren(...AE.runs.runs.map((r) =>
    AE.el("option", { value: r.name, selected: r.name === AE.run }, `${r.name} (${r.individuals}, ${r.strategy})`)));
  select.disabled = names.length < 2;
  for (const a of document.querySelectorAll("nav a")) {
    const base = a.getAttribute("href").split("?")[0];
    a.setAttribute("href", AE.run ? `${base}?run=${encodeURIComponent(AE.run)}` : base);
    a.classList.toggle("current", a.dataset.page === AE.page);
  }
};

function changed(next, prev, keys) {
  if (!prev) return true;
  return keys.some((k) => JSON.stringify(next[k]) !== JSON.stringify(prev[k]));
}

AE.onState = async function (state) {
  const prev = AE.state;
  AE.state = state;
  if (changed(state, prev, ["store", "runs"])) await AE.loadRuns();
  if (changed(state, prev, ["store", "runs", ...AE.pages[AE.page].deps])) await AE.refresh(false);
};

AE.connect = function () {
  const live = document.getElementById("live");
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
  source.addEventListener("state", (e) => AE.onState(JSON.parse(e.data)));
  AE.source = source;
};
