"use strict";
// bodycomp QC gallery: tiles, sorting, filters, the reader's marks and their export.
// Every value is inserted with textContent (never innerHTML): QC reasons quote header values.
(function () {
  const page = JSON.parse(document.getElementById("gallery-data").textContent);
  const tiles = page.tiles;
  const byKey = new Map(tiles.map((t) => [t.study_key, t]));
  const storeKey = "bodycomp-gallery-marks:" + page.gallery_id;
  const RANK = { review: 0, failed: 1, l3_not_found: 2, pending: 3, ok: 4 };
  const LABEL = { ok: "ok", review: "review", failed: "failed", l3_not_found: "L3 not found", pending: "pending" };
  const MARKS = [["", "not marked"], ["ok", "ok"], ["wrong_level", "wrong level"], ["wrong_outline", "wrong outline"]];

  // Marks: those already applied (DIR/corrections.csv), then this browser's unsaved ones.
  const marks = {};
  for (const t of tiles) {
    if (t.reader_mark) marks[t.study_key] = { mark: t.reader_mark, slice: t.reader_slice_index };
  }
  try {
    const stored = JSON.parse(localStorage.getItem(storeKey) || "{}");
    for (const [key, value] of Object.entries(stored)) {
      if (!byKey.has(key)) continue;
      if (value && value.mark) marks[key] = value;
      else delete marks[key];
    }
  } catch (e) { /* no storage (private window): marks live until the page closes */ }
  const cleared = new Set();

  function save() {
    const data = Object.assign({}, marks);
    for (const key of cleared) if (!(key in data)) data[key] = null;
    try { localStorage.setItem(storeKey, JSON.stringify(data)); } catch (e) { /* see above */ }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function num(value, digits, unit) {
    if (value === null || value === undefined) return "n/a";
    return value.toFixed(digits) + (unit ? " " + unit : "");
  }

  function verdictLabel(v) { return LABEL[v] || v; }

  function levelLine(t) {
    if (t.l3_slice_index === null) return null;
    const how = t.l3_manual ? "reader's slice (manual)"
      : "confidence " + num(t.l3_confidence, 2) + ", " + (t.l3_method || "?");
    return "L3 slice " + t.l3_slice_index + " · z " + num(t.l3_z_mm, 1, "mm") + " · " + how;
  }

  function cutOff(t) {
    if (t.lsmm === true) return "low muscle mass";
    if (t.lsmm === false) return "no low muscle mass";
    return "LSMM " + (t.lsmm_status || "n/a").replace(/_/g, " ");
  }

  function missing(t, label) {
    const why = label === "level picture" && t.l3_manual ? ": the slice is the reader's" : "";
    return el("div", { class: "nopicture", text: "no " + label + why });
  }

  function picture(t, kind, label) {
    const thumb = t.pictures[kind + "_thumb"];
    if (!thumb) return missing(t, label);
    const img = el("img", { src: thumb, alt: label + " of " + t.study_key, loading: "lazy", "data-kind": kind });
    img.addEventListener("click", () => openViewer(t.study_key));
    return img;
  }

  function markControls(t, node) {
    const box = el("div", { class: "marks" });
    const current = marks[t.study_key] || { mark: "", slice: null };
    const slice = el("input", {
      type: "number", min: "0", step: "1", placeholder: "slice", "aria-label": "slice to measure",
      class: "mark-slice", value: current.slice === null || current.slice === undefined ? null : current.slice,
      disabled: current.mark !== "wrong_level",
    });
    // without an outline there is nothing to call wrong but the level
    for (const [value, label] of MARKS.filter(([v]) => v !== "wrong_outline" || t.status === "done")) {
      const radio = el("input", {
        type: "radio", name: "mark-" + t.study_key, value: value, checked: current.mark === value,
      });
      radio.addEventListener("change", () => setMark(t.study_key, value, slice, node));
      box.append(el("label", {}, radio, " " + label));
    }
    slice.addEventListener("input", () => setMark(t.study_key, "wrong_level", slice, node));
    box.append(slice);
    return box;
  }

  function setMark(key, mark, sliceInput, node) {
    if (!mark) {
      delete marks[key];
      cleared.add(key);
    } else {
      const typed = sliceInput.value.trim();
      const slice = mark === "wrong_level" && /^\d+$/.test(typed) ? parseInt(typed, 10) : null;
      marks[key] = { mark: mark, slice: slice };
    }
    sliceInput.disabled = mark !== "wrong_level";
    node.classList.toggle("marked", key in marks);
    save();
    updateExport();
  }

  function renderTile(t) {
    const node = el("article", { class: "tile v-" + t.verdict, "data-key": t.study_key, "data-verdict": t.verdict });
    if (marks[t.study_key]) node.classList.add("marked");
    node.append(el("div", { class: "tile-head" },
      el("span", { class: "key", text: t.study_key }),
      el("span", { class: "muted", text: t.source_kind }),
      el("span", { class: "badge v-" + t.verdict, text: verdictLabel(t.verdict) })));
    node.append(el("div", { class: "thumbs" },
      picture(t, "overlay", "overlay picture"), picture(t, "level", "level picture")));
    const numbers = el("div", { class: "numbers" });
    const level = levelLine(t);
    if (level) numbers.append(el("div", { text: level }));
    if (t.status === "done") {
      numbers.append(el("div", {
        text: "SM " + num(t.sm_area_cm2, 1, "cm²") + " (" + num(t.sm_mean_hu, 1, "HU") + ") · IMAT "
          + num(t.imat_area_cm2, 1) + " · VAT " + num(t.vat_area_cm2, 1) + " · SAT " + num(t.sat_area_cm2, 1, "cm²"),
      }));
      const smi = "SMI " + num(t.smi_cm2_m2, 1, "cm²/m²")
        + (t.smi_cm2_m2 === null && t.smi_missing_reason ? " (" + t.smi_missing_reason + ")" : "");
      numbers.append(el("div", { text: smi + " · BMI " + num(t.bmi_kg_m2, 1) + " · " + cutOff(t) }));
    }
    if (t.status === "l3_not_found") {
      numbers.append(el("div", { class: "wrap", text: t.l3_not_found_reason || "L3 not found" }));
      if (t.levels_seen.length) numbers.append(el("div", { class: "muted", text: "levels seen: " + t.levels_seen.join(", ") }));
    }
    if (t.error) numbers.append(el("div", { class: "error wrap", text: t.error }));
    node.append(numbers);
    if (t.flags.length) node.append(el("div", { class: "flags" }, ...t.flags.map((f) => el("span", { class: "flag", text: f }))));
    if (t.reasons.length) node.append(el("ul", { class: "reasons" }, ...t.reasons.map((r) => el("li", { text: r }))));
    if (t.status !== "failed" && t.status !== "pending") node.append(markControls(t, node));
    return node;
  }

  const container = document.getElementById("tiles");
  const nodes = new Map(tiles.map((t) => [t.study_key, renderTile(t)]));

  function fillSelect(select, counts, label) {
    for (const [value, count] of [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))) {
      select.append(el("option", { value: value, text: (label ? label(value) : value) + " (" + count + ")" }));
    }
  }
  const verdicts = new Map(); const flags = new Map();
  for (const t of tiles) {
    verdicts.set(t.verdict, (verdicts.get(t.verdict) || 0) + 1);
    for (const f of t.flags) flags.set(f, (flags.get(f) || 0) + 1);
  }
  const filterVerdict = document.getElementById("filter-verdict");
  const filterFlag = document.getElementById("filter-flag");
  const filterMark = document.getElementById("filter-mark");
  const sortBy = document.getElementById("sort");
  fillSelect(filterVerdict, verdicts, verdictLabel);
  fillSelect(filterFlag, flags);

  const low = (v) => (v === null || v === undefined ? -1 : v);
  const high = (v) => (v === null || v === undefined ? Infinity : v);
  const byStudy = (a, b) => (a.study_key < b.study_key ? -1 : a.study_key > b.study_key ? 1 : 0);
  const SORTS = {
    review: (a, b) => (RANK[a.verdict] ?? 9) - (RANK[b.verdict] ?? 9) || low(a.l3_confidence) - low(b.l3_confidence) || byStudy(a, b),
    confidence: (a, b) => low(a.l3_confidence) - low(b.l3_confidence) || byStudy(a, b),
    smi: (a, b) => high(a.smi_cm2_m2) - high(b.smi_cm2_m2) || byStudy(a, b),
    key: byStudy,
  };

  let visible = [];
  function apply() {
    const v = filterVerdict.value, f = filterFlag.value, m = filterMark.value;
    const ordered = [...tiles].sort(SORTS[sortBy.value] || SORTS.review);
    visible = [];
    for (const t of ordered) {
      const mark = marks[t.study_key] ? marks[t.study_key].mark : "none";
      const show = (!v || t.verdict === v) && (!f || t.flags.includes(f)) && (!m || mark === m);
      const node = nodes.get(t.study_key);
      node.hidden = !show;
      container.append(node);
      if (show) visible.push(t.study_key);
    }
    document.getElementById("shown").textContent = "showing " + visible.length + " of " + tiles.length;
  }
  for (const control of [filterVerdict, filterFlag, filterMark, sortBy]) control.addEventListener("change", apply);

  function updateExport() {
    const n = Object.keys(marks).length;
    document.getElementById("export").textContent = "Export corrections.csv (" + n + " marked)";
  }

  document.getElementById("export").addEventListener("click", () => {
    const lines = ["study_key,mark,slice_index"];
    for (const key of Object.keys(marks).sort()) {
      const m = marks[key];
      const slice = m.mark === "wrong_level" && m.slice !== null && m.slice !== undefined ? String(m.slice) : "";
      lines.push([key, m.mark, slice].join(","));
    }
    const link = document.getElementById("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    link.click();
  });

  // The full pictures, one study at a time; arrows walk the tiles as filtered and sorted.
  const viewer = document.getElementById("viewer");
  let viewing = null;
  function openViewer(key) {
    const t = byKey.get(key);
    viewing = key;
    document.getElementById("viewer-title").textContent = key + " · " + verdictLabel(t.verdict) + (levelLine(t) ? " · " + levelLine(t) : "");
    const box = document.getElementById("viewer-pictures");
    box.replaceChildren();
    for (const [kind, label] of [["overlay", "overlay picture"], ["level", "level picture"]]) {
      const src = t.pictures[kind];
      if (!src) { box.append(missing(t, label)); continue; }
      box.append(el("img", { src: src, alt: label + " of " + key, "data-kind": kind }));
      box.append(el("a", { href: src, target: "_blank", rel: "noopener", text: "open the " + label + " alone" }));
    }
    viewer.hidden = false;
  }
  function closeViewer() { viewer.hidden = true; viewing = null; }
  document.getElementById("viewer-close").addEventListener("click", closeViewer);
  document.addEventListener("keydown", (event) => {
    if (viewer.hidden) return;
    if (event.key === "Escape") closeViewer();
    else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      const at = visible.indexOf(viewing);
      const next = visible[at + (event.key === "ArrowRight" ? 1 : -1)];
      if (next) openViewer(next);
    }
  });

  const count = (v) => verdicts.get(v) || 0;
  document.getElementById("summary").textContent = tiles.length + " studies: " + count("review") + " review, "
    + count("ok") + " ok, " + count("l3_not_found") + " L3 not found, " + count("failed") + " failed";
  document.getElementById("generated").textContent = "made " + page.generated + " by bodycomp " + page.bodycomp_version;
  apply();
  updateExport();
})();
