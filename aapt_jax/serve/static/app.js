// The page's client: one WebSocket, keys and mouse drags out, raw RGB frames in.
// Protocol: aapt_jax/serve/protocol.py. State for tests is exposed as window.aapt.
"use strict";

const KEYMAP = {
  KeyW: "forward", ArrowUp: "forward", KeyS: "back", ArrowDown: "back",
  KeyA: "left", ArrowLeft: "left", KeyD: "right", ArrowRight: "right",
  KeyQ: "turn_left", KeyE: "turn_right", KeyR: "look_up", KeyF: "look_down",
};
const $ = (id) => document.getElementById(id);
const canvas = $("screen");
const ctx = canvas.getContext("2d");

const aapt = window.aapt = {
  connected: false, info: null, stream: 0, running: false, source: null, frames: [], latencies: [], errors: [],
  held: new Set(), seq: 0,
};
let ws = null;
let drag = [0, 0];
const pending = new Map();  // seq -> performance.now() when sent
const arrivals = [];        // receive times of the last frames, for fps

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function connect() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  ws = new WebSocket(scheme + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : ""));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { aapt.connected = true; setStatus("connected: start a world or upload a picture"); };
  ws.onclose = (ev) => {
    aapt.connected = false;
    setStatus("disconnected (" + ev.code + (ev.reason ? ": " + ev.reason : "") + "); reload to reconnect", true);
  };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onBinary(ev.data));
}

function onJson(msg) {
  if (msg.type === "hello") {
    aapt.info = msg;
    canvas.width = msg.video_hw[1];
    canvas.height = msg.video_hw[0];
    $("model").textContent = `${msg.config}: ${msg.video_hw[0]}x${msg.video_hw[1]} at ${msg.fps} fps on ` +
      `${msg.platform} (${msg.device}); generator: ${msg.generator}; VAE: ${msg.vae}; compiled in ` +
      `${msg.compile_s === null ? "?" : msg.compile_s.toFixed(1)} s`;
    if (msg.random_weights) {
      $("weights-warning").hidden = false;
      $("weights-warning").textContent = "Randomly initialised weights: this server runs an untrained " +
        "model, so the video is noise that still reacts to the camera. Start the server with " +
        "--checkpoint=DIR --vae=DIR for trained ones.";
    }
  } else if (msg.type === "started") {
    aapt.stream = msg.stream;
    aapt.running = true;
    aapt.source = msg.source;
    aapt.frames = [];
    pending.clear();
    setStatus(`streaming (${msg.source}${msg.source === "world" ? " seed " + msg.seed : ""})`);
    canvas.focus();
  } else if (msg.type === "stopped") {
    aapt.running = false;
    setStatus("stopped");
  } else if (msg.type === "error") {
    if (msg.code === "internal" && msg.stream) aapt.running = false;
    aapt.errors.push(msg);
    setStatus("error: " + msg.message, true);
  }
}

function frameHash(rgb) {
  let h = 2166136261;  // FNV-1a over the bytes: cheap, enough to tell frames apart
  for (let i = 0; i < rgb.length; i++) { h ^= rgb[i]; h = Math.imul(h, 16777619); }
  return h >>> 0;
}

function onBinary(buf) {
  const view = new DataView(buf);
  const n = view.getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const payload = new Uint8Array(buf, 4 + n);
  if (head.type === "mp4") return saveMp4(payload);
  if (head.type !== "frame" || head.stream !== aapt.stream) return;
  const now = performance.now();
  draw(payload, head.width, head.height);
  for (const [seq, sent] of pending) {
    if (seq <= head.ctrl_seq) {
      aapt.latencies.push(now - sent);
      pending.delete(seq);
    }
  }
  arrivals.push(now);
  while (arrivals.length && arrivals[0] < now - 1000) arrivals.shift();
  aapt.frames.push({index: head.index, latent: head.latent, ctrl_seq: head.ctrl_seq,
                    hash: frameHash(payload), pose: head.pose});
  if (aapt.frames.length > 5000) aapt.frames.shift();
  updateStats(head);
}

function draw(rgb, width, height) {
  const image = ctx.createImageData(width, height);
  const px = image.data;
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    px[j] = rgb[i]; px[j + 1] = rgb[i + 1]; px[j + 2] = rgb[i + 2]; px[j + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function median(xs) {
  const s = xs.slice(-50).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

function updateStats(head) {
  $("fps").textContent = arrivals.length.toFixed(0);
  const lat = aapt.latencies;
  $("latency").textContent = lat.length ? `${lat[lat.length - 1].toFixed(0)} / ${median(lat).toFixed(0)} ms` : "-";
  if (head.latent > 0) {
    $("step").textContent = head.step_ms.toFixed(1) + " ms";
    $("decode").textContent = head.decode_ms.toFixed(1) + " ms";
  }
  $("frames").textContent = String(aapt.frames.length);
  $("pose").textContent = head.pose.map((v) => v.toFixed(2)).join(", ");
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function sendKeys() {
  if (!aapt.stream) return;
  aapt.seq += 1;
  pending.set(aapt.seq, performance.now());
  send({type: "keys", seq: aapt.seq, actions: [...aapt.held], drag: drag});
  drag = [0, 0];
}
aapt.sendKeys = sendKeys;

// Keys typed into the seed field are not moves; after a click on a button they are.
function typing(ev) { return ev.target && ev.target.tagName === "INPUT"; }

document.addEventListener("keydown", (ev) => {
  const action = KEYMAP[ev.code];
  if (!action || typing(ev)) return;
  ev.preventDefault();
  if (ev.repeat || aapt.held.has(action)) return;
  aapt.held.add(action);
  sendKeys();
});
document.addEventListener("keyup", (ev) => {
  const action = KEYMAP[ev.code];
  if (!action || !aapt.held.has(action)) return;
  aapt.held.delete(action);
  sendKeys();
});
window.addEventListener("blur", () => { if (aapt.held.size) { aapt.held.clear(); sendKeys(); } });

let dragging = false;
canvas.addEventListener("mousedown", (ev) => { dragging = true; canvas.focus(); ev.preventDefault(); });
window.addEventListener("mouseup", () => { dragging = false; });
window.addEventListener("mousemove", (ev) => {
  if (!dragging) return;
  // In canvas pixels, so a drag across the picture turns the same at any display size.
  const scale = canvas.width / canvas.clientWidth;
  drag = [drag[0] + ev.movementX * scale, drag[1] + ev.movementY * scale];
});
setInterval(() => { if (drag[0] || drag[1]) sendKeys(); }, 50);

// A new start replaces the running stream: the server takes messages in order.
function start(msg) {
  if (aapt.running) send({type: "stop"});
  send(msg);
}
$("start-world").onclick = () => start({type: "start", source: "world", seed: Number($("seed").value) || 0});
$("start-image").onclick = () => {
  const file = $("image").files[0];
  if (!file) return setStatus("choose a PNG or JPEG first", true);
  if (file.size > 8 * 1024 * 1024) return setStatus("the picture is over 8 MiB", true);
  const reader = new FileReader();
  reader.onload = () => start({type: "start", source: "image", image: reader.result});
  reader.readAsDataURL(file);
};
$("reset").onclick = () => send({type: "reset"});
$("stop").onclick = () => send({type: "stop"});
$("download").onclick = () => send({type: "export"});

function saveMp4(bytes) {
  const url = URL.createObjectURL(new Blob([bytes], {type: "video/mp4"}));
  const a = document.createElement("a");
  a.href = url;
  a.download = "aapt-stream.mp4";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

connect();
