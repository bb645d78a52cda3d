// The web page of `blendmask serve`: no library, no CDN. One /predict call per image (with a
// low score floor and polygon masks); the slider then filters the table and the overlay here,
// without asking the server again. The bases / attention view is the /explain PNG.
"use strict";

const FLOOR = 0.05;  // the lowest score the slider can show
const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, detections: [], explainUrl: null };

function color(index) {
  const hue = (index * 137.508) % 360;  // golden angle: neighbours differ
  return `hsl(${hue.toFixed(0)}, 85%, 50%)`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; }
  catch (e) { return response.statusText; }
}

function visible() {
  const threshold = parseFloat($("score").value);
  return state.detections.filter((d) => d.score >= threshold);
}

function drawOverlay() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  canvas.width = state.image.naturalWidth;
  canvas.height = state.image.naturalHeight;
  ctx.drawImage(state.image, 0, 0);
  const line = Math.max(1, Math.round(canvas.width / 300));
  visible().slice().reverse().forEach((d) => {
    const c = color(d.index);
    ctx.fillStyle = c; ctx.strokeStyle = c; ctx.lineWidth = line;
    ctx.globalAlpha = 0.45;
    for (const poly of d.mask || []) {
      ctx.beginPath();
      for (let i = 0; i < poly.length; i += 2) ctx.lineTo(poly[i], poly[i + 1]);
      ctx.closePath(); ctx.fill();
    }
    ctx.globalAlpha = 1;
    const [x0, y0, x1, y1] = d.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.font = `${Math.max(10, 4 * line + 6)}px sans-serif`;
    ctx.fillText(`${d.name} ${d.score.toFixed(2)}`, x0 + 2, Math.max(y0 - 3, 10));
  });
  canvas.hidden = false;
  canvas.dataset.ready = "1";
}

function fillTable() {
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  const rows = visible();
  for (const d of rows) {
    const tr = document.createElement("tr");
    const cells = [d.index, d.name, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 0) td.style.borderLeft = `6px solid ${color(d.index)}`;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  $("count").textContent = `${rows.length} of ${state.detections.length} detections (score ≥ ${FLOOR} kept by the server)`;
}

function refresh() {
  $("score-value").textContent = parseFloat($("score").value).toFixed(2);
  if (!state.image) return;
  drawOverlay();
  fillTable();
}

async function predict(file) {
  state.file = file;
  state.explainUrl = null;
  $("overlay").dataset.ready = "";
  setStatus("predicting…");
  const response = await fetch(`/predict?conf=${FLOOR}&masks=polygon`, {
    method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
  });
  if (!response.ok) { setStatus(`error ${response.status}: ${await errorText(response)}`, true); return; }
  const result = await response.json();
  state.detections = result.detections.map((d, index) => ({ ...d, index, name: d.name ?? d.class_name }));
  const image = new Image();
  image.onload = () => {
    state.image = image;
    showExplain(false);
    $("toggle").disabled = false;
    setStatus(`${state.detections.length} detections in ${result.timing.total_ms.toFixed(0)} ms`);
    refresh();
  };
  image.src = URL.createObjectURL(file);
}

function showExplain(on) {
  if (!on && state.image) setStatus(`${state.detections.length} detections`);
  $("explain").hidden = !on;
  $("overlay").hidden = on;
  $("toggle").textContent = on ? "show overlay" : "show bases / attention";
}

async function toggleExplain() {
  if (!$("explain").hidden) { showExplain(false); return; }
  if (!state.explainUrl) {
    setStatus("explaining…");
    const response = await fetch("/explain?top=4", { method: "POST", body: state.file });
    if (!response.ok) { setStatus(`error ${response.status}: ${await errorText(response)}`, true); return; }
    state.explainUrl = URL.createObjectURL(await response.blob());
    $("explain").src = state.explainUrl;
    setStatus("bases, attentions and blended masks of the top detections");
  }
  showExplain(true);
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && predict(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]);
  });
  $("score").addEventListener("input", refresh);
  $("toggle").addEventListener("click", toggleExplain);
  fetch("/model").then((r) => r.json()).then((m) => {
    $("model-info").textContent = `${m.name} · ${m.preset} · ${m.backend} · classes: ${m.classes.join(", ") || "—"}`;
  });
}

setup();
