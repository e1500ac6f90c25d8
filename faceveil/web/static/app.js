// faceveil serve: the page. Plain JavaScript, no library, nothing fetched from anywhere but this server.
// The key (a key file's text, or a passphrase and its salt) lives in this page's memory only and
// goes with each request as a form field.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  keyText: null,                                   // the key file's text, in memory only
  files: { anonymize: [], recover: [], verify: [] }, // [{file, name}]
  regions: {},                                     // photo index -> [[x0, y0, x1, y1]] added by hand
  detected: null,                                  // the last detection: {job, items}
  busy: false,
};

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function oneLine(text) {
  return String(text || "something went wrong").split("\n")[0].slice(0, 500);
}

function showError(text) {
  const p = $("error");
  p.textContent = oneLine(text);
  p.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

async function failure(response) {
  try { return oneLine((await response.json()).error); } catch (e) { return `the server answered ${response.status}`; }
}

function fileUrl(job, n, download) { return `/api/jobs/${job}/files/${n}${download ? "?download=1" : ""}`; }

function setBusy(busy) {
  state.busy = busy;
  for (const id of ["detect", "run-anonymize", "run-recover", "run-verify", "keygen"]) $(id).disabled = busy;
}

// ------------------------------------------------------------------ jobs

function progress(status) {
  const box = $("progress");
  box.hidden = false;
  const total = status.total || 0;
  const frac = total > 0 ? Math.min(1, status.done / total) : 0;
  $("progress-fill").style.width = `${Math.round(frac * 100)}%`;
  let text = status.phase || "";
  if (status.state === "queued") text = `waiting: ${status.position || 1} job(s) before this one`;
  if (total > 0 && status.state === "running") text += ` (${Math.round(frac * 100)}%)`;
  $("progress-text").textContent = text;
}

async function runJob(path, form, tab) {
  clearError();
  setBusy(true);
  $(tab).querySelector(".actions").after($("progress"), $("error"));  // under the buttons pressed
  $(`results-${tab}`).replaceChildren();
  progress({ state: "queued", phase: "sending", done: 0, total: 0, position: 0 });
  $("progress-text").textContent = "sending the files";
  try {
    const r = await fetch(path, { method: "POST", body: form, credentials: "same-origin" });
    if (!r.ok) { $("progress").hidden = true; throw new Error(await failure(r)); }
    const { job } = await r.json();
    for (;;) {
      const s = await fetch(`/api/jobs/${job}`, { credentials: "same-origin" });
      if (!s.ok) throw new Error(await failure(s));
      const status = await s.json();
      progress(status);
      if (status.state === "done") { $("progress").hidden = true; return { job, result: status.result }; }
      if (status.state === "failed") { $("progress").hidden = true; throw new Error(status.error); }
      await new Promise((res) => setTimeout(res, 250));
    }
  } finally {
    setBusy(false);
  }
}

// ------------------------------------------------------------------ the key

function keyMode() { return document.querySelector("input[name=key-mode]:checked").value; }

function addKey(form) {
  if (keyMode() === "file") {
    if (!state.keyText) throw new Error("no key yet: generate a new key or choose your key file (step 1)");
    form.append("key", state.keyText);
  } else {
    const pass = $("passphrase").value, salt = $("salt").value.trim();
    if (!pass) throw new Error("enter your passphrase (step 1)");
    if (!salt) throw new Error("a passphrase needs its salt: press New salt once, and keep the salt with your files");
    form.append("passphrase", pass);
    form.append("salt", salt);
  }
}

function keyLoaded(text, name, fingerprint) {
  state.keyText = text;
  $("key-status").textContent = `Key: ${name}${fingerprint ? `, fingerprint ${fingerprint.slice(0, 16)}…` : ""} (held by this page only)`;
  $("key-status").className = "status-ok";
}

async function generateKey() {
  clearError();
  try {
    const r = await fetch("/api/keygen", { method: "POST", credentials: "same-origin" });
    if (!r.ok) throw new Error(await failure(r));
    const blob = await r.blob();
    const text = await blob.text();
    const a = el("a", { href: URL.createObjectURL(blob), download: "faceveil.key", id: "key-download" });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 10000);
    keyLoaded(text, "faceveil.key (new)", r.headers.get("X-Key-Fingerprint"));
    $("key-warning").hidden = false;
  } catch (e) { showError(e.message); }
}

async function chooseKey(file) {
  const text = await file.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (e) { /* the server says what is wrong */ }
  keyLoaded(text, file.name, doc && doc.fingerprint);
  if (!doc || doc.format !== "faceveil-key") {
    $("key-status").textContent = `${file.name} does not look like a faceveil key file`;
    $("key-status").className = "status-bad";
  }
  $("key-warning").hidden = true;
}

function newSalt() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  $("salt").value = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------ files in

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const f = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file: f, name: prefix + f.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const e of batch) await walk(e, `${prefix}${entry.name}/`, out);
    }
  }
}

async function dropped(dt) {
  const entries = Array.from(dt.items || []).map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.some(Boolean)) {
    const out = [];
    for (const e of entries) if (e) await walk(e, "", out);
    return out;
  }
  return Array.from(dt.files).map((f) => ({ file: f, name: f.name }));
}

function fromInput(input) {
  return Array.from(input.files).map((f) => ({ file: f, name: f.webkitRelativePath || f.name }));
}

function setFiles(kind, list) {
  list = list.filter((x) => !x.name.split("/").pop().startsWith("."));
  state.files[kind] = list;
  const mb = list.reduce((s, x) => s + x.file.size, 0) / 2 ** 20;
  $(`list-${kind}`).textContent = list.length
    ? `${list.length} file(s), ${mb.toFixed(1)} MB: ${list.slice(0, 8).map((x) => x.name).join(", ")}${list.length > 8 ? ", …" : ""}`
    : "";
  if (kind === "anonymize") { state.regions = {}; state.detected = null; $("previews").replaceChildren(); $("detect-hint").hidden = true; }
  $(`results-${kind}`).replaceChildren();
}

function wireDrop(kind) {
  const zone = $(`drop-${kind}`);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    setFiles(kind, await dropped(e.dataTransfer));
  });
  $(`files-${kind}`).addEventListener("change", (e) => setFiles(kind, fromInput(e.target)));
  const folder = $(`folder-${kind}`);
  if (folder) folder.addEventListener("change", (e) => setFiles(kind, fromInput(e.target)));
}

function filesForm(kind) {
  const list = state.files[kind];
  if (!list.length) throw new Error("no file yet: drop or choose some first");
  const form = new FormData();
  for (const x of list) form.append("files", x.file, x.name);
  return form;
}

function options() {
  return JSON.stringify({
    method: $("method").value, mask_extent: $("mask-extent").value, cover: $("cover").value,
    output: $("output").value, mark: $("mark").checked, keep_original_file: $("keep-original").checked,
    pixel_recovery: $("pixel-recovery").checked,
  });
}

// ------------------------------------------------------------------ detect and add faces

const COLOURS = { diffusion: "#27c23f", left: "#e6281e", added: "#e020d0" };
function colour(t) { return COLOURS[t] || "#fab014"; }
function kindOf(t) { return t === "diffusion" ? "t-diffusion" : t === "left" ? "t-left" : t === "added" ? "t-added" : "t-cover"; }

function drawBoxes(canvas, item) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const s = item.scale;
  const lw = Math.max(2, Math.round(canvas.width / 400));
  ctx.lineWidth = lw;
  ctx.font = `${Math.max(12, Math.round(canvas.width / 70))}px system-ui, sans-serif`;
  const boxes = item.faces.map((f) => ({ x: f.box[0], y: f.box[1], w: f.box[2], h: f.box[3], t: f.treatment, label: `${f.index} ${f.treatment} ${Math.round(f.size)}px` }));
  for (const r of state.regions[item.index] || []) boxes.push({ x: r[0], y: r[1], w: r[2] - r[0], h: r[3] - r[1], t: "added", label: `added: ${$("method").value === "diffusion" ? $("cover").value : $("method").value}` });
  if (item.drag) boxes.push({ ...item.drag, t: "added", label: "" });
  for (const b of boxes) {
    ctx.strokeStyle = colour(b.t);
    ctx.setLineDash(b.t === "added" ? [6, 4] : []);
    ctx.strokeRect(b.x * s, b.y * s, b.w * s, b.h * s);
    if (b.label) {
      const tw = ctx.measureText(b.label).width, th = parseInt(ctx.font, 10);
      const ty = b.y * s - th - 4 >= 0 ? b.y * s - th - 4 : (b.y + b.h) * s + 2;
      ctx.fillStyle = colour(b.t);
      ctx.fillRect(b.x * s, ty, tw + 6, th + 4);
      ctx.fillStyle = "#000";
      ctx.fillText(b.label, b.x * s + 3, ty + th);
    }
  }
  ctx.setLineDash([]);
}

function photoPoint(canvas, item, e) {
  const rect = canvas.getBoundingClientRect();
  const x = ((e.clientX - rect.left) / rect.width) * canvas.width / item.scale;
  const y = ((e.clientY - rect.top) / rect.height) * canvas.height / item.scale;
  return [Math.max(0, Math.min(item.width, x)), Math.max(0, Math.min(item.height, y))];
}

function wireDrag(canvas, item, table) {
  let start = null;
  canvas.addEventListener("pointerdown", (e) => { start = photoPoint(canvas, item, e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!start) return;
    const [x, y] = photoPoint(canvas, item, e);
    item.drag = { x: Math.min(start[0], x), y: Math.min(start[1], y), w: Math.abs(x - start[0]), h: Math.abs(y - start[1]) };
    drawBoxes(canvas, item);
  });
  canvas.addEventListener("pointerup", (e) => {
    if (!start) return;
    const [x, y] = photoPoint(canvas, item, e);
    const box = [Math.min(start[0], x), Math.min(start[1], y), Math.max(start[0], x), Math.max(start[1], y)].map((v) => Math.round(v));
    start = null;
    item.drag = null;
    if (box[2] - box[0] >= 4 && box[3] - box[1] >= 4) (state.regions[item.index] ||= []).push(box);
    drawBoxes(canvas, item);
    fillTable(table, item, canvas);
  });
}

function fillTable(table, item, canvas) {
  const rows = [el("tr", {}, el("th", { text: "face" }), el("th", { text: "box x, y, w, h" }), el("th", { text: "size" }),
    el("th", { text: "treatment" }), el("th", { text: "why" }), el("th", { text: "" }))];
  for (const f of item.faces) {
    rows.push(el("tr", {}, el("td", { text: String(f.index) }), el("td", { text: f.box.map((v) => Math.round(v)).join(", ") }),
      el("td", { text: `${Math.round(f.size)} px` }), el("td", { class: kindOf(f.treatment), text: f.treatment }),
      el("td", { text: f.why || "" }), el("td")));
  }
  (state.regions[item.index] || []).forEach((r, k) => {
    const remove = el("button", { class: "secondary", type: "button", text: "remove" });
    remove.addEventListener("click", () => { state.regions[item.index].splice(k, 1); drawBoxes(canvas, item); fillTable(table, item, canvas); });
    rows.push(el("tr", {}, el("td", { text: "+" }), el("td", { text: `${r[0]}, ${r[1]}, ${r[2] - r[0]}, ${r[3] - r[1]}` }),
      el("td", { text: `${Math.min(r[2] - r[0], r[3] - r[1])} px` }), el("td", { class: "t-added", text: "added by hand" }),
      el("td", { text: "gets a cover (no landmarks)" }), el("td", {}, remove)));
  });
  table.replaceChildren(...rows);
}

function previewCard(job, item) {
  const card = el("div", { class: "card preview", "data-name": item.name });
  card.append(el("h3", { text: item.name }));
  if (item.error) { card.append(el("p", { class: "status-bad", text: item.error })); return card; }
  card.append(el("p", { class: "summary", text: item.summary }));
  const img = el("img", { src: fileUrl(job, item.preview), alt: `faces found in ${item.name}` });
  const canvas = el("canvas", { "aria-label": "drag to add a face" });
  const stage = el("div", { class: "stage" }, img, canvas);
  const table = el("table", { class: "faces" });
  img.addEventListener("load", () => {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    drawBoxes(canvas, item);
    card.dataset.ready = "1";
  });
  wireDrag(canvas, item, table);
  canvas.addEventListener("redraw", () => drawBoxes(canvas, item));
  fillTable(table, item, canvas);
  card.append(stage, table);
  return card;
}

async function detect() {
  try {
    const form = filesForm("anonymize");
    form.append("options", options());
    form.append("regions", JSON.stringify(state.regions));
    const { job, result } = await runJob("/api/detect", form, "anonymize");
    state.detected = { job, items: result.items };
    $("previews").replaceChildren(...result.items.map((it) => previewCard(job, it)));
    $("detect-hint").hidden = false;
  } catch (e) { showError(e.message); }
}

// ------------------------------------------------------------------ anonymize

function downloads(job, files) {
  const p = el("p", { class: "downloads" });
  for (const [label, n] of files) p.append(el("a", { href: fileUrl(job, n, true), download: "", text: label }));
  return p;
}

async function anonymize() {
  try {
    const form = filesForm("anonymize");
    addKey(form);
    form.append("options", options());
    form.append("regions", JSON.stringify(state.regions));
    const { job, result } = await runJob("/api/anonymize", form, "anonymize");
    const out = $("results-anonymize");
    const cards = [el("h2", { text: `Results: ${result.summary}` })];
    for (const it of result.items) {
      const card = el("div", { class: "card result", "data-name": it.name });
      card.append(el("h3", { text: it.name }));
      if (it.error) { card.append(el("p", { class: "status-bad", text: it.error })); cards.push(card); continue; }
      card.append(el("p", { class: it.left ? "status-bad summary" : "summary", text: it.summary }));
      if (!it.video) {
        card.append(el("div", { class: "pair" },
          el("figure", {}, el("img", { src: fileUrl(job, it.before), alt: "before" }), el("figcaption", { text: "before" })),
          el("figure", {}, el("img", { src: fileUrl(job, it.files[0]), alt: "after", class: "after" }), el("figcaption", { text: "after" }))));
      }
      const what = it.video ? ["download the anonymized video (.mkv)", "download its recovery record (.fvvid)"]
        : ["download the anonymized photo", "download its recovery record (.fvrec)"];
      const labels = it.files.map((n, k) => [what[Math.min(k, 1)], n]);
      card.append(downloads(job, labels));
      cards.push(card);
    }
    if (result.items.some((it) => !it.error)) {
      cards.push(el("p", {}, el("a", { href: `/api/jobs/${job}/zip`, download: "", id: "zip-anonymize", text: "download all (zip)" })));
    }
    out.replaceChildren(...cards);
  } catch (e) { showError(e.message); }
}

// ------------------------------------------------------------------ recover and verify

async function recover() {
  try {
    const form = filesForm("recover");
    addKey(form);
    const { job, result } = await runJob("/api/recover", form, "recover");
    const cards = [el("h2", { text: `Results: ${result.summary}` })];
    for (const it of result.items) {
      const card = el("div", { class: "card result", "data-name": it.name });
      card.append(el("h3", { text: it.name }));
      if (it.error) { card.append(el("p", { class: "status-bad status", text: it.error })); cards.push(card); continue; }
      card.append(el("p", { class: `status ${it.exact ? "status-ok" : "status-approx"}`, text: it.status }));
      if (!it.video) card.append(el("img", { src: fileUrl(job, it.file), alt: "recovered", class: "recovered" }));
      const files = [[it.video ? "download the original video (.mkv)" : "download the original", it.file]];
      if (it.original_file !== undefined) files.push(["download the original file (as it was uploaded)", it.original_file]);
      card.append(downloads(job, files));
      cards.push(card);
    }
    $("results-recover").replaceChildren(...cards);
  } catch (e) { showError(e.message); }
}

async function verify() {
  try {
    const form = filesForm("verify");
    addKey(form);
    const { result } = await runJob("/api/verify", form, "verify");
    const rows = result.items.map((it) => el("li", { "data-status": it.status },
      el("strong", { text: `${it.name}: ` }),
      el("span", { class: it.status === "ok" ? "status-ok" : "status-bad", text: it.line })));
    $("results-verify").replaceChildren(el("h2", { text: result.summary }), el("ul", {}, ...rows));
  } catch (e) { showError(e.message); }
}

// ------------------------------------------------------------------ wiring

function selectTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const p of document.querySelectorAll(".tab-panel")) p.hidden = p.id !== name;
  clearError();
}

document.addEventListener("DOMContentLoaded", async () => {
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  for (const r of document.querySelectorAll("input[name=key-mode]")) {
    r.addEventListener("change", () => {
      $("key-file-mode").hidden = keyMode() !== "file";
      $("passphrase-mode").hidden = keyMode() !== "passphrase";
    });
  }
  $("keygen").addEventListener("click", generateKey);
  $("key-file").addEventListener("change", (e) => { if (e.target.files[0]) chooseKey(e.target.files[0]); });
  $("new-salt").addEventListener("click", newSalt);
  for (const kind of ["anonymize", "recover", "verify"]) wireDrop(kind);
  $("detect").addEventListener("click", detect);
  $("run-anonymize").addEventListener("click", anonymize);
  $("run-recover").addEventListener("click", recover);
  $("run-verify").addEventListener("click", verify);
  for (const id of ["method", "cover"]) {
    $(id).addEventListener("change", () => {
      for (const c of document.querySelectorAll("#previews canvas")) c.dispatchEvent(new Event("redraw"));
    });
  }
  try {
    const r = await fetch("/api/info", { credentials: "same-origin" });
    if (!r.ok) throw new Error(await failure(r));
    const info = await r.json();
    $("server").textContent = `faceveil ${info.version} · backbone ${info.backbone} · up to ${info.max_upload_mb} MB and ${info.max_files} files per request`;
    document.body.dataset.ready = "1";
  } catch (e) { showError(e.message); }
});
