// autoevolve web view: the lineage tree (Cytoscape.js, zoomable) and one individual's side panel.
"use strict";

(function () {
  const { el, fmt, table, link, badge } = AE;
  const X_GAP = 140; // pixels between generations
  const Y_GAP = 34; // pixels between neighbours in the widest generation
  let cy = null;
  let selected = null;
  let moved = false; // the user zoomed, panned or clicked: stop fitting the tree to the window

  const STYLE = [
    { selector: "node", style: {
      label: "data(id)", "font-size": 9, "min-zoomed-font-size": 6, "text-valign": "top", "text-margin-y": -3, width: 18, height: 18,
      "background-color": "data(fill)", "border-width": 1, "border-color": "#333", color: "#333" } },
    { selector: "node[status = 'failed']", style: { shape: "diamond", "background-color": "#d62728" } },
    { selector: "node[status = 'rejected']", style: { shape: "round-rectangle", "background-color": "#fff", "border-color": "#999", "border-style": "dashed" } },
    { selector: "node[status = 'queued'], node[status = 'proposed']", style: { "background-color": "#fff", "border-color": "#6b7bd6", "border-style": "dashed", "border-width": 2 } },
    { selector: "node[status = 'running']", style: { "background-color": "#fff4d6", "border-color": "#f0a30a", "border-width": 3 } },
    { selector: "node[?champion]", style: { "border-color": "#d62728", "border-width": 3, width: 24, height: 24 } },
    { selector: "node:selected", style: { "border-color": "#1f6feb", "border-width": 4, "overlay-opacity": 0 } },
    { selector: "edge", style: { width: 1.2, "line-color": "#a0a0a0", "curve-style": "straight", "target-arrow-shape": "triangle", "target-arrow-color": "#a0a0a0", "arrow-scale": 0.6 } },
    { selector: "edge[?second]", style: { "line-color": "#e07b00", "target-arrow-color": "#e07b00", "line-style": "dashed" } },
    { selector: "edge[?champion]", style: { "line-color": "#d62728", "target-arrow-color": "#d62728", width: 2.5 } },
  ];

  function elements(t) {
    const height = Math.max(400, Y_GAP * t.widest);
    const nodes = t.nodes.map((n) => ({
      group: "nodes",
      data: { ...n, fill: n.colour || "#ffffff" },
      position: { x: n.x * X_GAP, y: n.y * height },
    }));
    const edges = t.edges.map((e) => ({
      group: "edges", data: { id: `${e.source}>${e.target}`, source: e.source, target: e.target, second: e.second, champion: e.champion },
    }));
    return { nodes, edges };
  }

  // Update the graph in place (new nodes appear, old ones move or change colour) so zoom and pan stay.
  function update(t) {
    const { nodes, edges } = elements(t);
    const want = new Set([...nodes, ...edges].map((x) => (x.data.id)));
    cy.batch(() => {
      cy.elements().filter((x) => !want.has(x.id())).remove();
      for (const n of nodes) {
        const have = cy.getElementById(n.data.id);
        if (have.nonempty()) { have.data(n.data); have.position(n.position); } else cy.add(n);
      }
      for (const e of edges) {
        const have = cy.getElementById(e.data.id);
        if (have.nonempty()) have.data(e.data); else cy.add(e);
      }
    });
  }

  function legend(t) {
    const s = t.scale;
    return el("span", { class: "legend" },
      s ? [`val_bpb ${fmt.num(s.min, 4)} `, el("span", { class: "scale", style: `background: linear-gradient(to right, ${s.colours.join(", ")})` }), ` ${fmt.num(s.max, 4)}+ · `] : null,
      "◆ failed · ▢ rejected · dashed: queued · orange ring: running · red: champion's line · orange dashes: a crossover's second parent · ",
      `${t.nodes.length} individuals`);
  }

  AE.pages.tree = {
    deps: ["individuals", "evaluations", "verdicts", "llm"],
    async render(main, first) {
      const t = await AE.api("/api/tree");
      if (!t.nodes.length) { cy = null; AE.empty(main, "No individuals yet."); return; }
      if (!first && cy && document.getElementById("cy")) {
        update(t);
        if (!moved) cy.fit(undefined, 30);
        document.getElementById("legend").replaceChildren(legend(t));
        if (selected && cy.getElementById(selected).nonempty()) await show(selected, false);
        return;
      }
      const holder = el("div", { id: "cy" });
      const bar = el("div", { class: "toolbar" },
        el("button", { onclick: () => { moved = false; cy.fit(undefined, 30); }, title: "show the whole tree (and keep it in view as it grows)" }, "fit"),
        el("button", { onclick: () => cy.zoom({ level: cy.zoom() * 1.3, renderedPosition: { x: holder.clientWidth / 2, y: holder.clientHeight / 2 } }) }, "+"),
        el("button", { onclick: () => cy.zoom({ level: cy.zoom() / 1.3, renderedPosition: { x: holder.clientWidth / 2, y: holder.clientHeight / 2 } }) }, "−"),
        el("a", { href: `/api/plot/lineage_tree.png?run=${encodeURIComponent(AE.run)}`, target: "_blank", title: "the report's picture of the tree" }, "PNG"),
        el("span", { id: "legend" }, legend(t)));
      const detail = el("aside", { id: "detail" }, el("p", { class: "note" }, "Click an individual (scroll to zoom, drag to pan)."));
      main.replaceChildren(el("div", { class: "tree-page" }, el("div", {}, bar, holder), detail));
      const { nodes, edges } = elements(t);
      moved = false;
      for (const kind of ["wheel", "pointerdown"]) holder.addEventListener(kind, () => { moved = true; }, { passive: true });
      const big = nodes.length > 1500;
      // A big tree: straight "haystack" edges without arrow heads, the cheapest that Cytoscape draws.
      const style = big ? [...STYLE, { selector: "edge", style: { "curve-style": "haystack", "target-arrow-shape": "none" } }] : STYLE;
      cy = cytoscape({
        container: holder, elements: [...nodes, ...edges], style, layout: { name: "preset" },
        minZoom: 0.02, maxZoom: 5, wheelSensitivity: 0.4, selectionType: "single", boxSelectionEnabled: false, autoungrabify: true,
        // A big tree pans and zooms as a picture, and is redrawn in full when it stops.
        textureOnViewport: big, hideEdgesOnViewport: big,
      });
      AE.cy = cy;
      cy.fit(undefined, 30);
      cy.on("tap", "node", (e) => { history.replaceState(null, "", `#${e.target.id()}`); show(e.target.id(), true); });
      const wanted = decodeURIComponent(location.hash.slice(1));
      if (wanted && cy.getElementById(wanted).nonempty()) await show(wanted, false);
    },
  };

  window.addEventListener("hashchange", () => {
    const id = decodeURIComponent(location.hash.slice(1));
    if (AE.page === "tree" && cy && id && id !== selected && cy.getElementById(id).nonempty()) show(id, true);
  });

  // --- one individual ----------------------------------------------------------------------------

  async function show(id, focus) {
    selected = id;
    const node = cy.getElementById(id);
    cy.$(":selected").unselect();
    node.select();
    if (focus) cy.animate({ center: { eles: node } }, { duration: 200 });
    const d = await AE.api(`/api/individual/${encodeURIComponent(id)}`);
    if (selected !== id) return; // another click came first
    const detail = document.getElementById("detail");
    const scroll = detail.scrollTop;
    detail.replaceChildren(...panel(d));
    detail.scrollTop = focus ? 0 : scroll;
  }

  function panel(d) {
    const parents = d.parents.length ? d.parents.flatMap((p, i) => [i ? ", " : "", link(p)]) : ["none (generation 0)"];
    const children = d.children.length ? d.children.flatMap((p, i) => [i ? ", " : "", link(p)]) : ["none yet"];
    const facts = [
      ["status", [badge(d.status), " ", d.decision ? badge(d.decision) : ""]],
      ["val_bpb", fmt.score(d.val_bpb_mean, d.val_bpb_std, d.val_bpb_n)],
      ["ranked by", d.bound === null ? "–" : `${fmt.num(d.bound)} (upper confidence bound of its mean)`],
      ["vs parent", fmt.signed(d.delta_parent)],
      ["vs baseline", fmt.signed(d.delta_baseline)],
      ["parents", parents],
      ["children", children],
      ["operator", `${d.operator}${d.kind ? ` (${d.kind})` : ""}`],
      ["island · generation", `${d.island} · ${d.generation}`],
      ["commit", `${String(d.commit).slice(0, 12)} on ${d.branch}`],
      ["created", fmt.time(d.created)],
      ["finished", fmt.time(d.finished)],
      ["device time", fmt.seconds(d.gpu_seconds)],
    ];
    if (d.judged) facts.splice(1, 0, ["judged", d.judged]);
    if (d.confirmation) facts.push(["fresh seeds", `${d.confirmed_seeds}: ${d.confirmation}${d.confirmed_bpb_n ? `, ${fmt.num(d.confirmed_bpb_mean)} over them (n=${d.confirmed_bpb_n})` : ""}`]);
    if (d.validation_depth !== null && d.validation_bpb_n) facts.push([`val_bpb @${d.validation_depth}`, `${fmt.num(d.validation_bpb_mean)} (n=${d.validation_bpb_n}), ${fmt.signed(d.validation_delta_baseline)} vs baseline`]);
    if (d.verdict) facts.push(["transfer", badge(d.verdict)]);
    if (d.guard_reason) facts.push(["refused", d.guard_reason]);
    const out = [
      el("h2", { id: "detail-title" }, `${d.id} · ${d.operator}`),
      el("p", {}, d.description),
      el("dl", {}, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("p", {}, d.mutable.flatMap((m, i) => [i ? " · " : "", el("a", { href: `/api/source/${encodeURIComponent(d.id)}/${m}?run=${encodeURIComponent(AE.run)}`, target: "_blank" }, `${m} at this commit`)])),
    ];
    if (d.judging.length) {
      out.push(el("h3", {}, "How it was judged"));
      out.push(el("pre", { class: "judging" }, d.judging.map((j) => `${fmt.time(j.time)} ${j.text}`).join("\n")));
    }
    out.push(el("h3", {}, "Scores per seed"));
    out.push(d.evaluations.length ? table(["purpose", "depth", "seed", "status", "val_bpb", "train s", "wall s", "device"],
      d.evaluations.flatMap((e) => [[e.purpose, { v: e.depth, num: true }, { v: e.seed, num: true }, badge(e.status), { v: fmt.num(e.val_bpb), num: true },
        { v: fmt.num(e.training_seconds, 1), num: true }, { v: fmt.num(e.wall_seconds, 1), num: true }, e.device],
        ...(e.status === "ok" || !e.reason ? [] : [el("tr", {}, el("td", { colspan: 8, class: "reason" }, e.reason))])]), "seeds")
      : el("p", { class: "note" }, "Not trained yet."));
    out.push(...curves(d));
    for (const diff of d.diffs) {
      out.push(el("h3", {}, "Diff against ", link(diff.parent)), AE.diff(diff.diff));
    }
    if (!d.diffs.length) out.push(el("p", { class: "note" }, "Generation 0: no parent to diff against."));
    out.push(el("h3", {}, "Log"));
    if (!d.evaluations.length) out.push(el("p", { class: "note" }, "No log yet."));
    d.evaluations.slice().reverse().forEach((e, i) => {
      out.push(el("details", { open: i === 0 },
        el("summary", {}, `${e.purpose}, depth ${e.depth}, seed ${e.seed}: ${e.status} · ${e.log || "no log file"} (last ${Math.min(80, e.log_lines)} of ${e.log_lines} lines)`),
        el("pre", { class: "log" }, e.log_tail || "(empty)")));
    });
    out.push(el("h3", {}, "LLM"));
    const llm = d.llm;
    if (llm.calls.length) {
      out.push(table(["time", "model", "for", "tokens in / out", "cost", "latency", "result"], llm.calls.map((c) => [
        fmt.time(c.time), c.model, c.purpose || "–", `${c.prompt_tokens} / ${c.completion_tokens}`, fmt.usd(c.cost), `${fmt.num(c.latency, 1)} s`,
        c.ok ? (c.outcome ? `${c.outcome}${c.why ? ": " + c.why : ""}` : "ok") : `failed: ${c.error}`]), "llm"));
      llm.calls.filter((c) => c.messages).forEach((c) => {
        const prompt = c.messages.map((m) => `[${m.role}]\n${m.content}`).join("\n\n");
        out.push(el("details", {}, el("summary", {}, `prompt and answer of call ${c.id} (${c.purpose || "call"})`),
          el("pre", { class: "log" }, prompt), el("pre", { class: "log" }, c.answer || "(no answer)")));
      });
    } else {
      out.push(el("p", { class: "note" }, `No LLM call was made for this individual (${d.operator}).`));
    }
    const notes = Object.entries(llm.notes || {});
    if (notes.length) {
      out.push(el("p", { class: "note" }, "What the proposal recorded (the LLM's rationale, when it gave one):"),
        el("pre", { class: "notes" }, notes.map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("\n")));
    }
    return out;
  }

  function curves(d) {
    const withCurve = d.evaluations.filter((e) => e.curve.length >= 2);
    if (!withCurve.length) {
      const one = d.evaluations.some((e) => e.curve.length === 1);
      return [el("p", { class: "note" }, one ? "Curve: the log has one progress line per run (train.py prints one every 25 steps)." : "Curve: no progress lines in the logs.")];
    }
    const steps = [...new Set(withCurve.flatMap((e) => e.curve.map((p) => p[0])))].sort((a, b) => a - b);
    const data = [steps, ...withCurve.map((e) => { const m = new Map(e.curve); return steps.map((s) => (m.has(s) ? m.get(s) : null)); })];
    const colours = ["#1f6feb", "#2a9d3f", "#d62728", "#f0a30a", "#8250df", "#555"];
    const holder = el("div", { class: "plot", id: "curve" });
    requestAnimationFrame(() => new uPlot({
      width: 500, height: 220, scales: { x: { time: false } }, axes: [{ label: "step" }, { label: "training loss", size: 55 }],
      series: [{ label: "step" }, ...withCurve.map((e, i) => ({ label: `${e.purpose} s${e.seed}`, stroke: colours[i % colours.length], spanGaps: true }))],
    }, data, holder));
    return [el("h3", {}, "Training curve (from the log)"), holder];
  }
})();
