// vlmad serve web page: plain JS, no external resources.
"use strict";

(function () {
  const HISTORY_N = 12;
  const $ = (id) => document.getElementById(id);
  const state = { apiKey: sessionStorage.getItem("vlmad-api-key") || "", history: [], info: null };

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.apiKey) h["X-API-Key"] = state.apiKey;
    return h;
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const res = await fetch(path, opts);
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.status === 401) {
      $("auth").hidden = false;
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      const msg = (err.message || ("HTTP " + res.status)) + (err.hint ? " (" + err.hint + ")" : "");
      const e = new Error(msg);
      e.status = res.status;
      throw e;
    }
    return body;
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "muted";
  }

  // ------------------------------------------------------------------ server info, reference sets
  async function loadInfo() {
    try {
      const info = await api("/v1/info");
      state.info = info;
      $("auth").hidden = !info.api_key_required || !!state.apiKey;
      const d = info.detector || {};
      $("model-info").textContent = info.ready
        ? `${d.method || "?"} · ${d.model || "?"} · weights ${d.weights_id || "?"} · class "${info.class_name}"`
        : "model loading…";
      $("random-banner").hidden = !info.random_weights;
      const warnings = (info.warnings || []).filter((w) => !info.random_weights || w !== info.warning);
      const ul = $("warnings");
      ul.replaceChildren(...warnings.map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
      ul.hidden = warnings.length === 0;
      $("threshold-info").textContent = info.threshold === null || info.threshold === undefined
        ? "no threshold configured (start with --deploy deploy.json for decisions)"
        : `threshold ${Number(info.threshold).toPrecision(4)} (score ≥ threshold → anomalous` +
          (info.deploy && info.deploy.expected_false_alarm_rate !== null && info.deploy.expected_false_alarm_rate !== undefined
            ? `; expected false-alarm rate ${(100 * info.deploy.expected_false_alarm_rate).toPrecision(2)} %)` : ")");
      if (info.references_supported === false) {  // an exported bundle: its few-shot memory is part of the graph
        $("new-set-upload").disabled = true;
        $("manage-status").textContent = "this service runs an exported bundle: its few-shot memory is baked in " +
          "(reference sets cannot be uploaded; export again with --reference-dir to change it)";
      }
      if (info.ready) setStatus("ready: drop an image");
      else { setStatus("model loading…"); setTimeout(loadInfo, 1000); }
      await loadSets();
    } catch (e) {
      $("model-info").textContent = "cannot reach the API: " + e.message;
      if (e.status !== 401) setTimeout(loadInfo, 3000);
    }
  }

  async function loadSets(select) {
    const sel = $("refset");
    const current = select !== undefined ? select : sel.value;
    const data = await api("/v1/references");
    const opts = [new Option("(none - zero-shot)", "")];
    for (const s of data.sets) opts.push(new Option(`${s.name} (${s.count} image${s.count === 1 ? "" : "s"})`, s.name));
    sel.replaceChildren(...opts);
    sel.value = data.sets.some((s) => s.name === current) ? current : "";
  }

  // ------------------------------------------------------------------ detection
  async function detect(file) {
    if (!file) return;
    const form = new FormData();
    form.append("image", file, file.name || "image");
    const params = new URLSearchParams({ heatmap: "color", mask: "true" });
    const ref = $("refset").value;
    if (ref) params.set("references", ref);
    setStatus(`scoring ${file.name || "image"}…`);
    const url = URL.createObjectURL(file);
    try {
      const r = await api("/v1/detect?" + params.toString(), { method: "POST", body: form });
      const item = { name: file.name || "image", url, result: r, heat: "data:image/png;base64," + r.heatmap.color_png_b64 };
      state.history.unshift(item);
      while (state.history.length > HISTORY_N) {
        const old = state.history.pop();
        if (!state.history.some((h) => h.url === old.url)) URL.revokeObjectURL(old.url);
      }
      show(item);
      renderHistory();
      setStatus(`scored ${item.name} in ${r.timing_ms.total.toFixed(0)} ms`);
    } catch (e) {
      URL.revokeObjectURL(url);
      setStatus("error: " + e.message, true);
    }
  }

  function show(item) {
    const r = item.result;
    $("result").hidden = false;
    $("score").textContent = r.score.toFixed(4);
    const dec = $("decision");
    dec.textContent = r.decision || (r.decision_note ? "no decision" : "no threshold");
    dec.className = "badge " + (r.decision || "");
    const note = $("decision-note");
    note.textContent = r.decision_note ? "⚠ " + r.decision_note : "";
    note.hidden = !r.decision_note;
    $("result-meta").textContent = `${item.name} · ${r.image.width}×${r.image.height} · ${r.method}` +
      (r.references ? ` · references "${r.references}" (${r.shots}-shot)`
        : r.shots ? ` · ${r.shots}-shot memory built in` : " · zero-shot") +
      ` · batch of ${r.batch_size} · ${r.timing_ms.total.toFixed(0)} ms`;
    const warn = $("result-warning");
    warn.textContent = r.warning ? "⚠ " + r.warning : "";
    warn.hidden = !r.warning;
    $("img-original").src = item.url;
    $("img-base").src = item.url;
    $("heat").src = item.heat;
    const contour = r.heatmap.contour_png_b64;
    $("contour").hidden = !contour;
    if (contour) $("contour").src = "data:image/png;base64," + contour;
    drawColourBar(r.heatmap.scale, r.heatmap.defect_area);
    applyOpacity();
  }

  // colour bar of the fixed heatmap scale (jet: lo = blue, hi = red) with the pixel threshold marked
  function drawColourBar(scale, area) {
    const bar = $("colour-bar");
    if (!scale) { bar.hidden = true; return; }
    bar.hidden = false;
    $("bar-hi").textContent = Number(scale.hi).toPrecision(3);
    $("bar-lo").textContent = Number(scale.lo).toPrecision(3);
    const mark = $("bar-threshold");
    const t = scale.pixel_threshold;
    mark.hidden = t === null || t === undefined;
    if (!mark.hidden) {
      const frac = Math.min(1, Math.max(0, (t - scale.lo) / (scale.hi - scale.lo)));
      mark.style.bottom = (100 * frac).toFixed(1) + "%";
      mark.title = `pixel threshold ${Number(t).toPrecision(3)}`;
    }
    $("bar-source").textContent = `scale: ${scale.source}` +
      (area === null || area === undefined ? "" : ` · defect area ${(100 * area).toFixed(2)} % (white contour)`);
  }

  function renderHistory() {
    const ol = $("history");
    ol.replaceChildren(...state.history.map((item) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = item.url;
      img.alt = item.name;
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = item.name;
      const score = document.createElement("div");
      const r = item.result;
      score.textContent = `${r.score.toFixed(4)} ${r.decision ? "· " + r.decision : ""}` +
        (r.references ? ` · ${r.references}` : "");
      if (r.decision === "anomalous") score.className = "error";
      li.append(img, name, score);
      li.title = "show this result";
      li.addEventListener("click", () => show(item));
      return li;
    }));
  }

  function applyOpacity() {
    const v = Number($("opacity").value);
    $("heat").style.opacity = String(v);
    $("opacity-value").textContent = v.toFixed(2);
  }

  // ------------------------------------------------------------------ reference-set management
  async function uploadSet() {
    const name = $("new-set-name").value.trim();
    const files = $("new-set-files").files;
    const status = $("manage-status");
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) { status.textContent = "name: 1-64 of A-Z a-z 0-9 _ -"; return; }
    if (!files.length) { status.textContent = "choose one or more normal images"; return; }
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    const replace = $("new-set-replace").checked ? "?replace=true" : "";
    status.textContent = "uploading…";
    try {
      const r = await api(`/v1/references/${encodeURIComponent(name)}${replace}`, { method: "POST", body: form });
      status.textContent = `stored "${r.name}" (${r.count} images${r.fit_ms ? `, memory built in ${r.fit_ms.toFixed(0)} ms` : ""})`;
      await loadSets(r.name);
    } catch (e) {
      status.textContent = "error: " + e.message;
    }
  }

  async function deleteSet() {
    const name = $("refset").value;
    const status = $("manage-status");
    if (!name) { status.textContent = "select a reference set first"; return; }
    try {
      await api(`/v1/references/${encodeURIComponent(name)}`, { method: "DELETE" });
      status.textContent = `deleted "${name}"`;
      await loadSets("");
    } catch (e) {
      status.textContent = "error: " + e.message;
    }
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    $("history-n").textContent = String(HISTORY_N);
    $("api-key").value = state.apiKey;
    $("api-key-save").addEventListener("click", () => {
      state.apiKey = $("api-key").value.trim();
      sessionStorage.setItem("vlmad-api-key", state.apiKey);
      loadInfo();
    });
    $("opacity").addEventListener("input", applyOpacity);
    $("refset-reload").addEventListener("click", () => loadSets().catch((e) => setStatus(e.message, true)));
    $("file").addEventListener("change", (ev) => { detect(ev.target.files[0]); ev.target.value = ""; });
    const drop = $("drop");
    drop.addEventListener("click", (ev) => { if (ev.target.tagName !== "LABEL" && ev.target.id !== "file") $("file").click(); });
    drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file").click(); } });
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      const f = ev.dataTransfer && ev.dataTransfer.files[0];
      if (f) detect(f);
    });
    $("new-set-upload").addEventListener("click", uploadSet);
    $("refset-delete").addEventListener("click", deleteSet);
    applyOpacity();
    loadInfo();
  }

  init();
})();
