// autoevolve web view: the overview, progress, transfer and operators pages.
"use strict";

(function () {
  const { el, fmt, table, link, badge } = AE;
  const ALL = ["individuals", "evaluations", "events", "llm", "sessions", "verdicts"];

  // a budget as a user reads it: "300 s" or "65,536 training tokens" (prepare.profiles.budget_text)
  function budgetText(budget, unit) {
    return unit === "tokens" ? `${Math.round(budget).toLocaleString("en-US")} training tokens` : `${budget} s`;
  }

  function card(label, value, sub) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
      sub ? el("div", { class: "sub" }, sub) : null);
  }

  // --- the run at a glance -------------------------------------------------------------------

  let tick = null;

  AE.pages.overview = {
    deps: ALL,
    async render(main) {
      const s = await AE.api("/api/overview");
      // Clocks (uptime, how long each device has been on its child) move between store changes.
      clearTimeout(tick);
      if (s.active) tick = setTimeout(() => AE.refresh(false), 5000);
      const busy = s.devices.length;
      const total = s.session ? s.session.slots : 0;
      const devices = s.active
        ? card("devices busy", `${busy} / ${total}`, s.devices.map((d) => `${d.individual} for ${fmt.seconds(d.seconds)}`).join(", ") || "idle")
        : card("devices busy", "stopped", "no `evolve run` session is running");
      const best = s.best;
      const base = s.baseline;
      const gain = best && base && best.mean !== null && base.mean !== null ? best.mean - base.mean : null;
      const llm = s.llm || {};
      const champ = s.champion;
      const cards = el("div", { class: "cards" },
        card("run", s.run, `${s.strategy}, profile ${s.profile}, depth ${s.depth}, budget ${budgetText(s.budget, s.budget_unit)}`),
        card("state", s.active ? `running ${fmt.seconds(s.uptime)}` : "stopped",
          Object.entries(s.counts).map(([k, v]) => `${k} ${v}`).join(", ") + ` · queue ${s.queued}`),
        devices,
        card("experiments per hour", s.duty.experiments_per_hour === null ? "–" : s.duty.experiments_per_hour.toFixed(1),
          `duty cycle ${fmt.pct(s.duty.duty_cycle)} · devices busy ${fmt.pct(s.duty.busy_fraction)} · ${s.duty.evaluations} runs`),
        card("best so far", best ? best.id : "–",
          best ? `${fmt.score(best.mean, best.std, best.n)} · ${fmt.signed(gain)} vs baseline · ${s.best_note ? s.best_note + " · " : ""}${best.description}` : "no accepted child yet"),
        card("noise floor", fmt.num(s.noise_floor, 5), `the judge's noise model: ${s.noise}`),
        card("LLM spend", fmt.usd(llm.cost || 0),
          llm.calls ? `${llm.calls} calls (${llm.failures} failed), ${fmt.count(llm.tokens)} tokens` : "no LLM calls"),
        card("champion", champ ? champ.id : "–",
          champ ? `${fmt.num(champ.val_bpb)} (n=${champ.n}${champ.confirmation === "confirmed" ? `, fresh seeds ${champ.fresh_seeds}` : ", not confirmed on fresh seeds yet"}) · ${champ.verdict === "transfers" ? "transfers" : "not validated"}` : "nothing scored yet"));
      const bestEl = cards.children[4].querySelector(".value");
      if (best) bestEl.replaceChildren(link(best.id));
      const islands = table(["island", "members", "best", "val_bpb", "description"],
        Object.entries(s.islands).map(([i, lines]) => {
          const top = lines[0];
          return [i, { v: lines.length, num: true }, top ? link(top.id) : "–", { v: top ? fmt.num(top.mean) : "–", num: true }, top ? top.description : ""];
        }), "islands");
      main.replaceChildren(
        el("h1", {}, `Run ${s.run}`), cards,
        el("h2", {}, "Population"), islands,
        el("h2", {}, "Recent events"), el("div", { class: "events", id: "events" }, s.recent.slice().reverse().join("\n") || "no events yet"),
        el("p", { class: "note" }, `${s.individuals} individuals · ${s.device_hours.toFixed(2)} device hours · disk ${fmt.bytes(s.disk_bytes)}`));
    },
  };

  // --- progress ------------------------------------------------------------------------------

  let plot = null;

  function progressData(p) {
    const x = p.ids.map((_, i) => i + 1);
    const scored = p.y.filter((v) => v !== null);
    const top = scored.length ? Math.max(...scored) : 1;
    const failed = p.status.map((s, i) => (p.y[i] === null && (s === "failed" || s === "rejected") ? top : null));
    const record = p.y.map((v, i) => (p.record[i] ? v : null));
    const rest = p.y.map((v, i) => (p.record[i] ? null : v));
    return [x, rest, p.best, record, failed];
  }

  AE.pages.progress = {
    deps: ["individuals", "evaluations"],
    async render(main, first) {
      const p = await AE.api("/api/progress");
      if (!p.n) { plot = null; AE.empty(main, "No experiments yet."); return; }
      const data = progressData(p);
      const hover = () => document.getElementById("hover");
      if (!first && plot && document.getElementById("progress-plot")) {
        plot.ids = p;
        plot.setData(data);
        document.getElementById("progress-title").textContent = title(p);
        document.getElementById("bests").replaceWith(bests(p));
        return;
      }
      const holder = el("div", { id: "progress-plot", class: "plot" });
      main.replaceChildren(el("h1", { id: "progress-title" }, title(p)), holder,
        el("div", { id: "hover", class: "hover" }, "Hover a point for its idea; click it to open it in the tree."),
        el("p", {}, el("a", { href: `/api/plot/progress.png?run=${encodeURIComponent(AE.run)}`, target: "_blank" }, "the same plot as a PNG (as in `evolve report`)")),
        el("h2", {}, "New bests"), bests(p));
      const opts = {
        width: Math.max(400, holder.clientWidth), height: 420,
        scales: { x: { time: false } },
        axes: [{ label: "experiment #" }, { label: "val_bpb (lower is better)", size: 70 }],
        series: [
          { label: "#" },
          { label: "experiment", stroke: "#9a9a9a", paths: () => null, points: { show: true, size: 6, fill: "#b0b0b0" } },
          { label: "running best", stroke: "#2a9d3f", width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
          { label: "new best", stroke: "#1d6b2c", paths: () => null, points: { show: true, size: 10, fill: "#2a9d3f" } },
          { label: "failed / rejected", stroke: "#d62728", paths: () => null, points: { show: true, size: 7, fill: "#d62728" } },
        ],
        hooks: {
          setCursor: [(u) => {
            const i = u.cursor.idx;
            const q = u.ids;
            if (i === null || i === undefined || !q) return;
            hover().textContent = `#${i + 1} ${q.ids[i]} (${q.operator[i]}, ${q.status[i]}): ${q.y[i] === null ? "no score" : fmt.num(q.y[i])} · ${q.description[i]}`;
          }],
        },
      };
      plot = new uPlot(opts, data, holder);
      plot.ids = p;
      plot.over.addEventListener("click", () => {
        const i = plot.cursor.idx;
        if (i !== null && i !== undefined) location.href = `/tree?run=${encodeURIComponent(AE.run)}#${encodeURIComponent(plot.ids.ids[i])}`;
      });
      window.addEventListener("resize", () => plot && plot.setSize({ width: Math.max(400, holder.clientWidth), height: 420 }));
    },
  };

  function title(p) {
    const records = p.record.filter(Boolean).length;
    const best = p.best[p.best.length - 1];
    return `Progress of ${p.run}: ${p.n} experiments, ${records} new bests, best ${fmt.num(best)}` + (p.depth ? ` (depth ${p.depth})` : "");
  }

  function bests(p) {
    const rows = [];
    p.ids.forEach((id, i) => {
      if (p.record[i]) rows.push([{ v: i + 1, num: true }, link(id), { v: fmt.num(p.y[i]), num: true }, p.operator[i], p.description[i]]);
    });
    const t = table(["#", "id", "val_bpb", "operator", "idea"], rows.reverse(), "bests");
    t.id = "bests";
    return t;
  }

  // --- transfer --------------------------------------------------------------------------------

  function gain(delta, floor) {
    if (delta === null || delta === undefined) return "–";
    const g = -delta;
    return `${g > 0 ? "+" : ""}${g.toFixed(6)}` + (floor ? ` (${(g / floor).toFixed(1)} floors)` : "");
  }

  AE.pages.transfer = {
    deps: ["evaluations", "verdicts"],
    async render(main) {
      const t = await AE.api("/api/transfer");
      const parts = [el("h1", {}, `Transfer of ${t.run}`)];
      if (!t.tables.length) {
        parts.push(el("p", { class: "note" }, "No validation yet. `evolve validate --depth 24 --top 5` re-runs the best individuals and the baseline deeper; this page then shows whether their gains transfer."));
        main.replaceChildren(...parts);
        return;
      }
      const c = t.champion;
      parts.push(el("p", {}, "Champion: ", c ? link(c.id) : "–", c ? ` ${c.validated ? `transfers to depth ${c.validation_depth}` : `unvalidated: ${c.reason}`}` : ""));
      for (const r of t.tables) {
        const b = r.baseline;
        const score = (s) => (s ? fmt.score(s.mean, s.std, s.n) : "–");
        const rows = [[`${b.id} (baseline)`, score(b.search), "–", score(b.validation), "–", "", ""]];
        for (const row of r.rows) {
          rows.push([link(row.id), score(row.search), gain(row.search_delta, r.noise_floor.search),
            score(row.validation), gain(row.validation_delta, r.noise_floor.validation), badge(row.verdict), row.description || ""]);
        }
        parts.push(el("h2", {}, `depth ${r.search_depth} → ${r.validation_depth}` + (r.budget ? `, ${budgetText(r.budget, r.budget_unit)} per run` : "")),
          table(["id", `val_bpb @${r.search_depth}`, "gain", `val_bpb @${r.validation_depth}`, "gain", "verdict", "description"], rows, "transfer"),
          el("p", { class: "note" }, `noise floor ${fmt.num(r.noise_floor.search)} at depth ${r.search_depth}, ${fmt.num(r.noise_floor.validation)} at depth ${r.validation_depth}; Spearman rank correlation ${r.spearman === null ? "n/a" : r.spearman.toFixed(3)} over ${r.rows.length}. Gain = baseline − val_bpb (higher is better).`));
      }
      const stamp = encodeURIComponent(JSON.stringify((AE.state || {}).verdicts || ""));
      parts.push(el("img", { class: "mpl", alt: "transfer plot", src: `/api/plot/transfer.png?run=${encodeURIComponent(AE.run)}&v=${stamp}` }));
      main.replaceChildren(...parts);
    },
  };

  // --- operators -------------------------------------------------------------------------------

  AE.pages.operators = {
    deps: ["individuals", "evaluations", "events", "llm"],
    async render(main) {
      const o = await AE.api("/api/operators");
      const n = (v, d = 0) => ({ v: v === null || v === undefined ? "–" : Number(v).toFixed(d), num: true });
      const rows = o.rows.map((r) => [r.operator, n(r.children), n(r.evaluated), n(r.failed), n(r.rejected), n(r.improvements),
        { v: fmt.pct(r.improvement_rate), num: true }, { v: fmt.signed(r.best_delta), num: true }, { v: fmt.signed(r.mean_delta), num: true },
        n(r.gpu_seconds === undefined ? null : r.gpu_seconds / 3600, 2),
        n(r.gpu_seconds_per_improvement === undefined || r.gpu_seconds_per_improvement === null ? null : r.gpu_seconds_per_improvement / 3600, 2),
        { v: r.llm_cost === null || r.llm_cost === undefined ? "–" : fmt.usd(r.llm_cost), num: true },
        n(r.live_no_child), { v: fmt.pct(r.live_chance), num: true }]);
      main.replaceChildren(el("h1", {}, `Operators of ${o.run}`),
        table(["operator", "children", "evaluated", "failed", "rejected", "beat parent", "rate", "best Δ", "mean Δ", "device h",
          "device h / win", "LLM $", "no child", "chance now"], rows, "operators"),
        el("p", { class: "note" }, "A child beats its parent when its mean val_bpb is below its best parent's. Rate = beat parent / evaluated. \"No child\": proposals that failed before making a commit. \"Chance now\": the share of the next proposals the adaptive weights give it."));
    },
  };
})();
