// depotwatch dashboard: draws what the server computes and pushes over server-sent events.
// No build step, no framework, no polling: one EventSource, redraw on each event.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const LOCO_WIDTH_M = 3.1; // a locomotive body is about 3.1 m wide: drawn to scale
const model = { layout: null, states: {}, frames: {}, detections: {}, compare: null, accuracy: {} };
let flowView = localStorage.getItem("depotwatch.flow") || "prod";

function el(tag, attrs = {}, parent = null, ns = SVG) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
function html(tag, attrs = {}, parent = null) { return el(tag, attrs, parent, null); }

// Facility metres -> SVG user units: x as is, y flipped so north is up.
function fy(y) { const b = model.layout.bounds; return b.y_max + b.y_min - y; }
function pts(path) { return path.map(([x, y]) => `${x},${fy(y)}`).join(" "); }

function offsetPath(path, d) {
  if (!d || path.length < 2) return path;
  return path.map((p, i) => {
    const a = path[Math.max(0, i - 1)], b = path[Math.min(path.length - 1, i + 1)];
    const dx = b[0] - a[0], dy = b[1] - a[1], n = Math.hypot(dx, dy) || 1;
    return [p[0] - (dy / n) * d, p[1] + (dx / n) * d];
  });
}

function shownFlows() {
  const flows = model.layout ? model.layout.flows : ["prod"];
  if (flowView === "both") return flows.filter((f) => f === "prod" || f === "dev").length === 2
    ? ["prod", "dev"] : flows.slice(0, 2);
  return flows.includes(flowView) ? [flowView] : flows.slice(0, 1);
}

function differs(flow, id) {
  return flowView === "both" && model.compare && (model.compare.differs[flow] || []).includes(id);
}

function drawPlan() {
  const svg = document.getElementById("plan");
  svg.replaceChildren();
  if (!model.layout) return;
  const b = model.layout.bounds;
  svg.setAttribute("viewBox", `${b.x_min} ${b.y_min} ${b.x_max - b.x_min} ${b.y_max - b.y_min}`);
  for (const t of model.layout.tracks) {
    el("polyline", { points: pts(t.polyline), class: "track-line", "stroke-width": 0.4,
      "data-track": t.id }, svg);
    const [x, y] = t.polyline[0];
    el("text", { x: x - 2.6, y: fy(y) + 0.4, class: "track-label" }, svg).textContent = t.id;
  }
  const health = cameraHealth();
  for (const c of model.layout.cameras) {
    if (!c.position) continue;
    const status = c.enabled ? (health[c.id] || "ok") : "disabled";
    el("circle", { cx: c.position[0], cy: fy(c.position[1]), r: 0.6,
      class: `camera-dot ${status}`, "data-camera": c.id }, svg);
    el("text", { x: c.position[0] + 0.8, y: fy(c.position[1]) + 0.4, class: "camera-label" }, svg)
      .textContent = c.id;
  }
  const flows = shownFlows();
  const both = flows.length > 1;
  flows.forEach((flow, k) => {
    const st = model.states[flow];
    if (!st) return;
    const width = both ? LOCO_WIDTH_M / 2 : LOCO_WIDTH_M;
    const shift = both ? (k === 0 ? -1 : 1) * LOCO_WIDTH_M / 4 : 0;
    for (const lo of st.locomotives) {
      const path = offsetPath(lo.path, shift);
      const cls = ["loco", flow, lo.stale ? "stale" : "", differs(flow, lo.id) ? "diff" : ""];
      const g = el("g", { class: "loco-group", "data-flow": flow, "data-loco": lo.id }, svg);
      el("polyline", { points: pts(path), class: cls.join(" "), "stroke-width": width,
        "data-loco": lo.id }, g);
      const head = path[path.length - 1];
      el("circle", { cx: head[0], cy: fy(head[1]), r: width / 4, class: "loco-head" }, g);
      const midX = (path[0][0] + head[0]) / 2, midY = (path[0][1] + head[1]) / 2;
      const label = [lo.plate || "?", lo.model || ""].join(" ").trim();
      el("text", { x: midX, y: fy(midY) + 0.45, class: "loco-label" }, g).textContent = label;
      el("title", {}, g).textContent =
        `${flow}: ${label}, ${lo.tail_m}–${lo.head_m} m on ${lo.track_id}, conf ${lo.confidence}`;
    }
  });
  const asOf = flows.map((f) => model.states[f] && `${f} ${model.states[f].as_of}`).filter(Boolean);
  document.getElementById("as-of").textContent = asOf.length ? `(as of ${asOf.join(", ")})` : "";
  drawTable(flows);
}

function drawTable(flows) {
  const body = document.querySelector("#loco-table tbody");
  body.replaceChildren();
  for (const flow of flows) {
    const st = model.states[flow];
    if (!st) continue;
    for (const lo of st.locomotives) {
      const tr = html("tr", { class: differs(flow, lo.id) ? "diff" : "" }, body);
      for (const v of [flow, lo.track_id, lo.plate || "—", lo.model || "—",
        `${lo.tail_m}–${lo.head_m}`, lo.confidence, lo.cameras.join(" ")]) {
        html("td", {}, tr).textContent = v;
      }
    }
  }
}

function cameraHealth() {
  const out = {};
  for (const flow of shownFlows()) {
    const st = model.states[flow];
    if (!st) continue;
    for (const [cam, status] of Object.entries(st.cameras)) {
      if (out[cam] !== "stale") out[cam] = status;
    }
  }
  return out;
}

function drawHealth() {
  const ul = document.getElementById("health");
  ul.replaceChildren();
  if (!model.layout) return;
  const health = cameraHealth();
  for (const c of model.layout.cameras) {
    const status = c.enabled ? (health[c.id] || "unknown") : "disabled";
    const f = model.frames[c.id];
    html("li", { class: status }, ul).textContent =
      `${c.id}: ${status}${f ? ` · frame ${f.seq} at ${f.captured_at.slice(11, 19)}` : ""}` +
      (c.calibrated ? "" : " · not calibrated: detections not fused");
  }
}

function ensureTile(cam) {
  let tile = document.getElementById(`tile-${cam.id}`);
  if (tile) return tile;
  tile = html("div", { id: `tile-${cam.id}`, class: "tile", "data-camera": cam.id },
    document.getElementById("cameras"));
  html("span", { class: "name" }, tile).textContent = cam.id;
  html("img", { alt: `latest frame of ${cam.id}` }, tile);
  el("svg", { class: "overlay", viewBox: `0 0 ${cam.width} ${cam.height}`,
    preserveAspectRatio: "none" }, tile);
  return tile;
}

function drawTiles() {
  if (!model.layout) return;
  const known = new Set(model.layout.cameras.map((c) => c.id));
  for (const tile of document.querySelectorAll(".tile")) {
    if (!known.has(tile.dataset.camera)) tile.remove();
  }
  const health = cameraHealth();
  for (const cam of model.layout.cameras) {
    const tile = ensureTile(cam);
    tile.className = `tile ${cam.enabled ? (health[cam.id] || "") : "disabled"}`;
    drawFrame(cam.id);
  }
}

function drawFrame(cameraId) {
  const tile = document.getElementById(`tile-${cameraId}`);
  const f = model.frames[cameraId];
  if (!tile || !f) return;
  const img = tile.querySelector("img");
  if (img.dataset.seq !== String(f.seq)) {
    img.dataset.seq = String(f.seq);
    img.src = f.url;
  }
  const svg = tile.querySelector("svg");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${f.width} ${f.height}`);
  for (const flow of shownFlows()) {
    const d = model.detections[`${cameraId}/${flow}`];
    if (!d) continue;
    for (const b of d.boxes) {
      const [x1, y1, x2, y2] = b.box;
      el("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1,
        class: `box ${b.cls} ${flow}`, "data-flow": flow }, svg);
    }
  }
}

function drawCompare() {
  const div = document.getElementById("compare");
  const c = model.compare;
  if (!c) { div.textContent = "waiting for both flows"; return; }
  const [a, b] = c.flows;
  div.innerHTML = "";
  html("div", { class: "num" }, div).textContent =
    `agreement ${(c.agreement * 100).toFixed(0)}% · matched ${c.matched}`;
  html("div", {}, div).textContent = `only ${a}: ${c.only[a].length} · only ${b}: ${c.only[b].length}`;
  html("div", {}, div).textContent = `identity differs: ${c.identity_mismatch.length}`;
}

function drawAccuracy() {
  const div = document.getElementById("accuracy");
  const entries = Object.entries(model.accuracy || {});
  if (!entries.length) { div.textContent = "no ground truth yet"; return; }
  div.innerHTML = "";
  for (const [flow, a] of entries) {
    const err = a.position_error_m === null ? "—" : `${a.position_error_m.toFixed(2)} m`;
    const pct = (v) => (v === null ? "—" : `${(v * 100).toFixed(0)}%`);
    html("div", { class: "num", "data-flow": flow }, div).textContent =
      `${flow}: found ${pct(a.detected)} of ${a.true_count}, error ${err}, plates ${pct(a.plates)}, ` +
      `models ${pct(a.models)}, false ${a.false}`;
  }
}

function drawAll() {
  if (!model.layout) return;
  drawFlowSwitch();
  document.getElementById("title").textContent = `depotwatch · ${model.layout.name}`;
  drawPlan(); drawHealth(); drawTiles(); drawCompare(); drawAccuracy(); drawStateAge();
}

function drawFlowSwitch() {
  // One button per configured flow, plus "both" (prod vs dev, or the first two flows).
  const box = document.getElementById("flow-switch");
  const flows = model.layout.flows;
  const wanted = [...flows, ...(flows.length > 1 ? ["both"] : [])];
  const have = [...box.querySelectorAll("button")].map((b) => b.dataset.flow);
  if (have.join() === wanted.join()) return;
  box.replaceChildren();
  for (const f of wanted) {
    const btn = html("button", { "data-flow": f }, box);
    btn.textContent = f;
    btn.addEventListener("click", () => setFlowView(f));
  }
  if (!wanted.includes(flowView)) flowView = flows[0];
  for (const btn of box.querySelectorAll("button")) {
    btn.classList.toggle("active", btn.dataset.flow === flowView);
  }
}

function setFlowView(v) {
  flowView = v;
  localStorage.setItem("depotwatch.flow", v);
  for (const btn of document.querySelectorAll("#flow-switch button")) {
    btn.classList.toggle("active", btn.dataset.flow === v);
  }
  drawAll();
}

function drawStateAge() {
  // "live" above says the page is connected; this says whether what it shows is current.
  const box = document.getElementById("state-age");
  if (!model.layout) return;
  const limit = model.layout.state_stale_after_s;
  box.replaceChildren();
  for (const flow of model.layout.flows) {
    const st = model.states[flow];
    const span = html("span", {}, box);
    span.dataset.flow = flow;
    if (!st || !st.data_at) {
      span.className = "stale-state";
      span.textContent = `${flow}: no data `;
      continue;
    }
    const age = (Date.now() - Date.parse(st.data_at)) / 1000;
    span.className = age > limit ? "stale-state" : "fresh";
    span.textContent = `${flow}: data ${age < 100 ? age.toFixed(1) : Math.round(age)} s old `;
  }
}

const handlers = {
  snapshot(d) {
    Object.assign(model, { layout: d.layout, states: d.states, frames: d.frames,
      detections: d.detections, compare: d.compare, accuracy: d.accuracy });
    drawAll();
  },
  state(d) { model.states[d.flow] = d; drawPlan(); drawHealth(); drawTiles(); drawStateAge(); },
  frame(d) { model.frames[d.camera_id] = d; drawFrame(d.camera_id); },
  detections(d) { model.detections[`${d.camera_id}/${d.flow}`] = d; drawFrame(d.camera_id); },
  compare(d) { model.compare = d; drawCompare(); if (flowView === "both") drawPlan(); },
  accuracy(d) { model.accuracy = d; drawAccuracy(); },
};

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("events");
  source.onopen = () => { status.textContent = "live"; status.className = "up"; };
  // EventSource reconnects by itself; the server answers with a fresh snapshot.
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "down"; };
  for (const [type, fn] of Object.entries(handlers)) {
    source.addEventListener(type, (e) => fn(JSON.parse(e.data)));
  }
}

for (const btn of document.querySelectorAll("#flow-switch button")) {
  btn.addEventListener("click", () => setFlowView(btn.dataset.flow));
}
setFlowView(flowView);
connect();
setInterval(drawStateAge, 1000);
