// autoevolve web view: start the page: the runs, the store's state, the first drawing, then live updates.
"use strict";

(async function () {
  try {
    await AE.loadRuns();
    // The state before the first drawing: the stream's first message tells if anything changed since.
    AE.state = await AE.api("/api/state");
    await AE.refresh(true);
  } catch (err) {
    document.getElementById("main").replaceChildren(AE.el("p", { class: "error" }, `Could not reach the server: ${err.message}`));
  }
  document.getElementById("run").addEventListener("change", (e) => {
    const url = new URL(location.href);
    url.searchParams.set("run", e.target.value);
    url.hash = "";
    location.href = url.toString();
  });
  AE.connect();
})();
