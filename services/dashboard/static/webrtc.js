// depotwatch browser camera: stream this device's camera over WebRTC to the web app and draw
// the detections the pipeline makes on its frames over the live video.
// No build step, no framework. Boxes come from the same event stream as the dashboard.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "depotwatch_token";
const INSECURE =
  "Camera access needs a secure context, and this page is not one (" + location.origin + ").\n" +
  "Open it as https:// (put the web app behind a TLS reverse proxy), or through localhost " +
  "(e.g. ssh -L 8088:127.0.0.1:8088 depot-host, then http://localhost:8088/webrtc).\n" +
  "For a trial on a trusted LAN, Chrome can treat this address as secure: " +
  "chrome://flags/#unsafely-treat-insecure-origin-as-secure, add " + location.origin + ".";
const RECONNECT_MAX_MS = 10000;
const UNCALIBRATED = "not calibrated: its detections are shown here but not placed on tracks " +
  "or counted in the facility state (add 4+ pixel <-> floor calibration points to fuse it)";

// A random id for this page: its own reconnects replace its stream; other pages must take over.
const clientId = Array.from(crypto.getRandomValues(new Uint8Array(12)),
  (b) => b.toString(16).padStart(2, "0")).join("");

let info = null;        // GET api/v1/webrtc
let camera = null;      // the camera being streamed
let media = null;       // MediaStream from getUserMedia
let pc = null;          // RTCPeerConnection
let events = null;      // EventSource
let wanted = false;     // the user pressed Start and not Stop
let retryMs = 1000;
let retryTimer = null;
let flow = null;        // the flow whose detections are drawn (the first to answer)
const lags = [];        // seconds, frame captured -> boxes drawn (last 200)
const drawn = [];       // [frame seq, Date.now() when its boxes were drawn] (last 200)

function takeToken() {
  const q = new URLSearchParams(location.search);
  if (q.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, q.get("token"));
    q.delete("token");
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function authHeaders() {
  return token() ? { Authorization: "Bearer " + token() } : {};
}

function status(text) { $("status").textContent = text; }

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setConnection(text, up) {
  $("connection").textContent = text;
  $("connection").className = up ? "up" : "down";
}

async function loadCameras() {
  const resp = await fetch("api/v1/webrtc", { headers: authHeaders() });
  if (resp.status === 401) {
    $("token-row").hidden = false;
    showError("This web app needs its access token: open /webrtc?token=TOKEN or enter it above.");
    return;
  }
  if (!resp.ok) {
    showError("Could not list cameras: " + (await errorText(resp)));
    return;
  }
  info = await resp.json();
  $("token-row").hidden = true;
  const select = $("camera");
  select.replaceChildren();
  for (const cam of info.cameras) {
    const opt = document.createElement("option");
    opt.value = cam.id;
    opt.textContent = cam.id + (cam.enabled ? "" : " (disabled)") +
      (cam.calibrated ? "" : " (not calibrated)") +
      (cam.streaming ? " (streaming elsewhere)" : "") + " · " + cam.fps + " fps";
    select.append(opt);
  }
  if (!info.cameras.length) {
    showError("No browser cameras are configured. Add a camera with source: webrtc://<id> " +
      "(with calibration, to fuse its detections) to the facility config, e.g. with POST " +
      "/api/v1/cameras.");
  }
  const wantedCam = new URLSearchParams(location.search).get("camera");
  if (wantedCam && info.cameras.some((c) => c.id === wantedCam)) select.value = wantedCam;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.detail + (body.problems ? ": " + body.problems.map((p) => p.problem).join("; ") : "");
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

function cameraError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera access was refused. Allow the camera for this site (the camera icon in " +
        "the address bar, or the browser's site settings) and press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "This device has no usable camera (" + err.name + ").";
    case "NotReadableError":
      return "The camera is in use by another application; close it and press Start again.";
    default:
      return "Could not open the camera: " + (err && (err.message || err.name));
  }
}

async function start(takeover) {
  showError("");
  $("takeover").hidden = true;
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError(INSECURE);
    return;
  }
  camera = info && info.cameras.find((c) => c.id === $("camera").value);
  if (!camera) {
    showError("Pick a camera first.");
    return;
  }
  $("camera-health").textContent = camera.calibrated ? "" : "camera " + UNCALIBRATED;
  if (!media) {
    try {
      media = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: {
          width: { ideal: camera.width },
          height: { ideal: camera.height },
          // A few frames per kept one is plenty; more only costs decoding on the server.
          frameRate: { ideal: Math.min(15, Math.max(5, camera.fps * 3)) },
          facingMode: "environment",
        },
      });
    } catch (err) {
      showError(cameraError(err));
      return;
    }
    $("video").srcObject = media;
  }
  wanted = true;
  $("start").disabled = true;
  $("stop").disabled = false;
  $("camera").disabled = true;
  follow();
  await connect(Boolean(takeover));
}

function iceDone(conn, timeoutMs) {
  // Non-trickle: the offer goes out with every candidate gathered (or after timeoutMs).
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    conn.addEventListener("icegatheringstatechange", () => {
      if (conn.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function connect(takeover) {
  clearTimeout(retryTimer);
  if (pc) pc.close();
  const ice = (info.ice_servers || []).map((s) => {
    const server = { urls: s.urls };
    if (s.username) server.username = s.username;
    if (s.credential) server.credential = s.credential;
    return server;
  });
  const conn = new RTCPeerConnection({ iceServers: ice });
  pc = conn;
  for (const track of media.getVideoTracks()) conn.addTransceiver(track, { direction: "sendonly" });
  conn.addEventListener("connectionstatechange", () => onConnection(conn));
  status("connecting " + camera.id + " ...");
  setConnection("connecting", false);
  try {
    await conn.setLocalDescription(await conn.createOffer());
    await iceDone(conn, 3000);
    const resp = await fetch("api/v1/webrtc/" + encodeURIComponent(camera.id) + "/offer", {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify({
        sdp: conn.localDescription.sdp, type: "offer", client_id: clientId, takeover: takeover,
      }),
    });
    if (!resp.ok) {
      const text = await errorText(resp);
      if (resp.status === 409 && text.includes("another page")) {
        $("takeover").hidden = false;
      }
      if (resp.status >= 500) throw new Error(text);
      stopStreaming(text);
      return;
    }
    await conn.setRemoteDescription(await resp.json());
    // The server ending the stream (stop, take-over, watchdog) closes DTLS at once, while ICE
    // would take seconds to call the connection lost: reconnect on that.
    const dtls = conn.getSenders()[0] && conn.getSenders()[0].transport;
    if (dtls) {
      dtls.addEventListener("statechange", () => {
        if (conn === pc && (dtls.state === "closed" || dtls.state === "failed")) {
          retry("the server ended the stream");
        }
      });
    }
    retryMs = 1000;
  } catch (err) {
    if (conn === pc) retry("offer failed: " + (err.message || err));
  }
}

function onConnection(conn) {
  if (conn !== pc) return;
  const state = conn.connectionState;
  if (state === "connected") {
    status("streaming " + camera.id + " (" + camera.width + "x" + camera.height + ", " +
      camera.fps + " fps kept)");
    setConnection("streaming", true);
    showError("");
  } else if (state === "failed" || state === "closed" || state === "disconnected") {
    retry("connection " + state);
  }
}

function retry(why) {
  if (!wanted) return;
  setConnection("reconnecting", false);
  status(why + "; reconnecting in " + Math.round(retryMs / 1000) + " s");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => connect(false), retryMs);
  retryMs = Math.min(RECONNECT_MAX_MS, retryMs * 2);
}

function stopStreaming(why) {
  wanted = false;
  clearTimeout(retryTimer);
  if (pc) pc.close();
  pc = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("camera").disabled = false;
  setConnection("not streaming", false);
  if (why) showError(why);
  status("stopped");
}

async function stop() {
  const cam = camera;
  stopStreaming("");
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  $("video").srcObject = null;
  $("boxes").replaceChildren();
  if (cam) {
    await fetch("api/v1/webrtc/" + encodeURIComponent(cam.id) + "?client_id=" + clientId, {
      method: "DELETE", headers: authHeaders(),
    }).catch(() => {});
  }
}

// ---- what the pipeline says about this camera ------------------------------------------

function follow() {
  if (events) return;
  const q = token() ? "?token=" + encodeURIComponent(token()) : "";
  events = new EventSource("events" + q);
  events.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    for (const d of Object.values(snap.detections || {})) onDetections(d);
    for (const s of Object.values(snap.states || {})) onState(s);
  });
  events.addEventListener("detections", (e) => onDetections(JSON.parse(e.data)));
  events.addEventListener("state", (e) => onState(JSON.parse(e.data)));
}

function onDetections(d) {
  if (!camera || d.camera_id !== camera.id) return;
  if (flow === null) flow = d.flow;
  if (d.flow !== flow) return;
  const boxes = $("boxes");
  boxes.replaceChildren();
  const list = $("detections");
  list.replaceChildren();
  for (const b of d.boxes) {
    const [x1, y1, x2, y2] = b.box;
    const el = document.createElement("div");
    el.className = "det-box";
    el.dataset.cls = b.cls;
    el.dataset.confidence = b.confidence;
    el.style.left = (100 * x1 / d.width) + "%";
    el.style.top = (100 * y1 / d.height) + "%";
    el.style.width = (100 * (x2 - x1) / d.width) + "%";
    el.style.height = (100 * (y2 - y1) / d.height) + "%";
    const label = document.createElement("span");
    label.textContent = b.cls + " " + Math.round(100 * b.confidence) + "%";
    el.append(label);
    boxes.append(el);
    const li = document.createElement("li");
    li.textContent = b.cls + " " + b.confidence.toFixed(2);
    list.append(li);
  }
  const now = Date.now();
  const lag = (now - Date.parse(d.captured_at)) / 1000;
  lags.push(lag);
  drawn.push([d.seq, now]);
  if (lags.length > 200) lags.shift();
  if (drawn.length > 200) drawn.shift();
  const sorted = [...lags].sort((a, b) => a - b);
  const p = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  $("lag").textContent = d.boxes.length + " boxes (" + flow + ", frame " + d.seq + "), " +
    lag.toFixed(2) + " s after capture · p50 " + p(0.5).toFixed(2) + " s, p95 " +
    p(0.95).toFixed(2) + " s over " + sorted.length;
  $("lag").className = lag > 1 ? "late" : "";
  $("lag").dataset.lag = lag;
}

function onState(s) {
  if (!camera || (flow !== null && s.flow !== flow)) return;
  const health = s.cameras ? s.cameras[camera.id] : undefined;
  $("camera-health").textContent = "flow " + s.flow + ": camera " +
    (health === undefined ? "not in this state yet" : health) + " · state of " +
    new Date(s.as_of).toLocaleTimeString() + (camera.calibrated ? "" : " · " + UNCALIBRATED);
  const list = $("state");
  list.replaceChildren();
  const here = s.locomotives.filter((l) => l.cameras.includes(camera.id) ||
    camera.tracks.includes(l.track_id));
  for (const l of here) {
    const li = document.createElement("li");
    li.className = "state-loco";
    li.textContent = l.track_id + ": " + (l.model || "?") + " " + (l.plate || "no plate") +
      " · head " + l.head_m.toFixed(1) + " m, tail " + l.tail_m.toFixed(1) + " m" +
      (l.cameras.includes(camera.id) ? " · seen here" : "");
    list.append(li);
  }
  if (!here.length) list.innerHTML = "<li>no locomotive on this camera's tracks</li>";
}

$("start").addEventListener("click", () => start(false));
$("takeover").addEventListener("click", () => start(true));
$("stop").addEventListener("click", stop);
$("token-ok").addEventListener("click", () => {
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  showError("");
  loadCameras();
});
takeToken();
if (!window.isSecureContext) showError(INSECURE);
loadCameras();
