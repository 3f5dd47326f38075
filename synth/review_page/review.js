// The review page: one distorted image at a time, decisions saved through the server
// (synth/review.py) before they count. No framework, no build step.
"use strict";

const MAX_SIDE = 400;            // the longest side of a shown image, in CSS pixels
const S = { items: [], decisions: {}, view: [], pos: 0, history: [], zoom: false };
const $ = (id) => document.getElementById(id);
const FILTERS = ["f-distortion", "f-class", "f-severity", "f-decision"];

function showMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
  m.hidden = !text;
}

async function getJSON(url, options) {
  let r;
  try {
    r = await fetch(url, options);
  } catch (e) {
    throw new Error("the review server does not answer (stopped?): " + e.message);
  }
  let data;
  try {
    data = await r.json();
  } catch (e) {
    throw new Error(`${url}: HTTP ${r.status}, not JSON`);
  }
  if (!r.ok || data.error) throw new Error(data.error || `${url}: HTTP ${r.status}`);
  return data;
}

async function load() {
  let data;
  try {
    data = await getJSON("api/items");
  } catch (e) {
    showMessage("Cannot review this manifest:\n" + e.message);
    $("progress").textContent = "no samples";
    return;
  }
  S.items = data.items;
  S.decisions = data.decisions;
  $("decisions-file").textContent = "Decisions file: " + data.decisions_file;
  $("reviewer").value = localStorage.getItem("reviewer") || data.reviewer || "";
  for (const id of ["f-distortion", "f-class", "f-severity"]) {
    const field = $(id).dataset.field;
    const values = [...new Set(S.items.map((it) => it[field]).filter((v) => v != null))];
    for (const v of values.sort()) $(id).add(new Option(v, v));
  }
  if (!S.items.length) {
    showMessage("The manifest holds no samples.", "info");
    return;
  }
  $("viewer").hidden = false;
  applyFilters(null);
}

const decisionOf = (it) => S.decisions[it.id] || null;

function applyFilters(keepId) {
  const want = Object.fromEntries(FILTERS.map((id) => [id, $(id).value]));
  S.view = S.items.filter((it) =>
    (!want["f-distortion"] || it.distortion === want["f-distortion"]) &&
    (!want["f-class"] || it.class === want["f-class"]) &&
    (!want["f-severity"] || it.severity === want["f-severity"]) &&
    (!want["f-decision"] || (decisionOf(it) || "unreviewed") === want["f-decision"]));
  let pos = keepId ? S.view.findIndex((it) => it.id === keepId) : -1;
  if (pos < 0) pos = S.view.findIndex((it) => !decisionOf(it));  // resume: first unreviewed
  S.pos = Math.max(pos, 0);
  render();
}

function layout(prefix, it, path) {
  const [w, h] = it.image_size;
  const scale = Math.min(MAX_SIDE / w, MAX_SIDE / h);
  const view = $(prefix + "-view"), img = $(prefix + "-img"), box = $(prefix + "-box");
  view.style.width = `${w * scale}px`;
  view.style.height = `${h * scale}px`;
  const stage = view.firstElementChild;
  stage.style.width = view.style.width;
  stage.style.height = view.style.height;
  view.querySelectorAll(".missing").forEach((el) => el.remove());
  img.classList.toggle("upscaled", scale > 1);
  img.onerror = () => {
    const note = document.createElement("div");
    note.className = "missing";
    note.textContent = `image missing or unreadable: ${path}`;
    view.appendChild(note);
  };
  img.src = "image?path=" + encodeURIComponent(path);
  box.hidden = !it.bbox;
  if (it.bbox) {
    const [x1, y1, x2, y2] = it.bbox;
    Object.assign(box.style, { left: `${x1 * scale}px`, top: `${y1 * scale}px`,
      width: `${(x2 - x1) * scale}px`, height: `${(y2 - y1) * scale}px` });
  }
  // Zoom: scale the stage so the box fills ~90% of the view, centred on the box.
  const k = zoomFactor(it);
  let transform = "";
  if (k > 1) {
    const [x1, y1, x2, y2] = it.bbox.map((v) => v * scale);
    const tx = (w * scale) / 2 - k * (x1 + x2) / 2, ty = (h * scale) / 2 - k * (y1 + y2) / 2;
    transform = `translate(${tx}px, ${ty}px) scale(${k})`;
  }
  box.style.borderWidth = `${2 / k}px`;  // the outline stays 2 px on screen
  stage.style.transform = transform;
  view.classList.toggle("zoomed", !!transform);
}

// 1 when not zoomed (or the box already fills the image), else the stage's scale.
function zoomFactor(it) {
  if (!S.zoom || !it.bbox) return 1;
  const [w, h] = it.image_size, [x1, y1, x2, y2] = it.bbox;
  const k = Math.min(8, 0.9 * Math.min(w / (x2 - x1), h / (y2 - y1)));
  return k > 1.05 ? k : 1;  // a box that (nearly) fills the image has nothing to zoom to
}

function render() {
  renderProgress();
  const it = S.view[S.pos];
  document.body.dataset.item = it ? it.id : "";
  $("viewer").hidden = !it;
  if (!it) {
    showMessage("No image matches these filters.", "info");
    return;
  }
  if ($("message").className === "info") showMessage("");
  layout("dist", it, it.distorted);
  $("ref-panel").hidden = !it.reference;
  if (it.reference) layout("ref", it, it.reference);
  const label = $("box-label");
  label.textContent = [it.object, it.distortion].filter(Boolean).join(" · ");
  label.style.fontSize = `${12 / zoomFactor(it)}px`;
  // No room above a box at the image's top edge: the label goes just inside it.
  const shownTop = it.bbox ? (it.bbox[1] * MAX_SIDE) / Math.max(...it.image_size) : 0;
  label.classList.toggle("inside", !!it.bbox && shownTop < 18 && !S.zoom);
  if (it.missing.length) showMessage("Missing image file(s): " + it.missing.join(", "));
  $("position").textContent = `${S.pos + 1} / ${S.view.length}` +
    (S.view.length < S.items.length ? ` (filtered from ${S.items.length})` : "");
  const d = decisionOf(it);
  $("decision").textContent = d === "accept" ? "accepted" : d === "reject" ? "rejected"
    : "not reviewed";
  $("decision").className = "decision " + (d || "");
  $("i-object").textContent = it.object || "—";
  $("i-distortion").textContent = [it.distortion, it.class && `(${it.class})`]
    .filter(Boolean).join(" ") || "—";
  $("i-severity").textContent = it.severity ? `${it.severity} (level ${it.level})` : "—";
  $("i-box").textContent = it.bbox ? it.bbox.join(", ") + ` in ${it.image_size.join("×")}` : "—";
  $("i-id").textContent = `${it.id} (${it.split})`;
  const list = $("i-samples");
  list.replaceChildren(...it.samples.map((s) => {
    const li = document.createElement("li");
    li.textContent = `[${s.task}, ${s.reference || "?"}] ${s.question} → expected: ${s.answer}`;
    return li;
  }));
}

function renderProgress() {
  const decided = S.items.map(decisionOf).filter(Boolean);
  const accepted = decided.filter((d) => d === "accept").length;
  const share = decided.length ? Math.round((100 * accepted) / decided.length) : 0;
  const p = $("progress");
  p.dataset.reviewed = decided.length;
  p.dataset.total = S.items.length;
  p.dataset.accepted = accepted;
  p.textContent = `reviewed ${decided.length} / ${S.items.length} · accepted ${share}%` +
    ` (${accepted})`;
}

async function save(it, decision) {
  const reviewer = $("reviewer").value.trim();
  try {
    await getJSON("api/decision", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: it.id, decision, reviewer }) });
  } catch (e) {
    showMessage("NOT saved: " + e.message);
    return false;
  }
  if (decision) S.decisions[it.id] = decision; else delete S.decisions[it.id];
  return true;
}

async function decide(decision) {
  const it = S.view[S.pos];
  if (!it) return;
  const before = decisionOf(it);
  if (!(await save(it, decision))) return;
  S.history.push({ id: it.id, before });
  S.pos = Math.min(S.pos + 1, S.view.length - 1);
  render();
}

async function undo() {
  const last = S.history.pop();
  if (!last) return;
  const it = S.items.find((x) => x.id === last.id);
  if (!(await save(it, last.before))) {
    S.history.push(last);
    return;
  }
  const pos = S.view.findIndex((x) => x.id === last.id);
  if (pos >= 0) S.pos = pos;
  render();
}

function move(step) {
  S.pos = Math.min(Math.max(S.pos + step, 0), Math.max(S.view.length - 1, 0));
  render();
}

async function toggleSummary() {
  const box = $("summary");
  if (!box.hidden) { box.hidden = true; return; }
  let data;
  try {
    data = await getJSON("api/summary");
  } catch (e) {
    showMessage(e.message);
    return;
  }
  const rows = (title, table) => {
    let html = `<h3>by ${title}</h3><table><tr><th>${title}</th><th>accepted</th>` +
      "<th>rejected</th><th>unreviewed</th><th>acceptance</th></tr>";
    for (const [key, c] of Object.entries(table)) {
      const n = c.accept + c.reject;
      const share = n ? `${Math.round((100 * c.accept) / n)}%` : "—";
      html += `<tr><td>${escapeHtml(key)}</td><td>${c.accept}</td><td>${c.reject}</td>` +
        `<td>${c.unreviewed}</td><td>${share}</td></tr>`;
    }
    return html + "</table>";
  };
  box.innerHTML = "<h2>Summary</h2>" + rows("distortion", data.by_distortion) +
    rows("severity", data.by_severity);
  box.hidden = false;
}

const escapeHtml = (s) => s.replace(/[&<>"]/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

document.addEventListener("keydown", (e) => {
  // Ctrl/Alt/Meta combinations belong to the browser (Ctrl+R must reload, not reject).
  if (e.ctrlKey || e.altKey || e.metaKey) return;
  if (e.key === "Escape") {
    $("help").hidden = true;
    $("summary").hidden = true;
    document.activeElement.blur();
    return;
  }
  if (["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
  const actions = {
    a: () => decide("accept"), r: () => decide("reject"), u: undo,
    ArrowRight: () => move(1), ArrowDown: () => move(1),
    ArrowLeft: () => move(-1), ArrowUp: () => move(-1),
    z: () => { S.zoom = !S.zoom; render(); }, s: toggleSummary,
    "?": () => { $("help").hidden = !$("help").hidden; },
  };
  const action = actions[e.key.length === 1 ? e.key.toLowerCase() : e.key];
  if (action) {
    e.preventDefault();
    action();
  }
});

for (const id of FILTERS) {
  $(id).addEventListener("change", () => {
    const it = S.view[S.pos];
    applyFilters(it && it.id);
    $(id).blur();  // back to the keyboard
  });
}
$("reviewer").addEventListener("change", () => localStorage.setItem("reviewer",
  $("reviewer").value.trim()));
$("btn-help").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
$("btn-summary").addEventListener("click", toggleSummary);
load();
