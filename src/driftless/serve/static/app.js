// driftless play page: one WebSocket, frames as raw RGB behind a 16-byte header.
// No build step, no dependencies but ui.js (what it shares with the exported page, loaded before it).
// See docs/playing.md for the protocol.
"use strict";

(() => {
  const UI = window.DriftlessUI;
  const { $, keyLabel, overlay, hideOverlay } = UI;
  const HEADER_BYTES = 16;
  const FLAG_START = 1, FLAG_RECORDING = 2;
  const GROUP_LABELS = { none: "no-op", left: "left", right: "right", jump: "jump",
    left_jump: "left + jump", right_jump: "right + jump" };

  const state = {
    ws: null, ready: null, started: false, paused: false, inFlight: false, sentAt: 0, lastSent: 0,
    timer: null, held: [], heldButton: null, frames: 0, frameTimes: [], latency: null, recording: false,
    recorded: 0, downloads: null, tickMs: 1000 / 15, noop: 0, closedByServer: null,
  };
  // exposed for tests and for curious players (read-only use)
  window.driftless = { state, stats: () => ({ frames: state.frames, index: Number($("frame-index").textContent),
    fps: currentFps(), latency: state.latency, started: state.started, paused: state.paused,
    recording: state.recording, recorded: state.recorded, inFlight: state.inFlight }) };

  const frameCanvas = UI.screen($("screen"));

  // ------------------------------------------------------------------ UI helpers
  const toast = UI.toaster(5000);
  function setConn(text, cls) { const c = $("conn"); c.textContent = text; c.className = "pill " + (cls || ""); }
  function currentFps() { return UI.currentFps(state.frameTimes); }

  // ------------------------------------------------------------------ setup from "ready"
  function setup(ready) {
    state.ready = ready;
    const w = ready.world;
    state.tickMs = 1000 / ready.tick_fps;
    state.noop = w.noop;
    $("tick").textContent = String(ready.tick_fps);
    UI.showWorld(w, frameCanvas);
    const byAction = UI.actionButtons(w.num_actions, w.action_map.keys, pressButton, releaseButton);
    // the legend with each key's measured accuracy, where the map has one
    UI.legend(w.num_actions, w.action_map.keys, w.action_map.key_accuracy);
    const am = w.action_map, acc = am.accuracy;
    const pct = (x) => `${(100 * x).toFixed(1)}%`;
    const game = am.game || "CoinRun";
    let text;
    if (!Object.keys(am.keys).length) text = "This world has no action map: play with the number keys.";
    else if (am.method === "effect")
      text = `Keys are mapped by what each latent action does: ` + (acc == null ? "accuracy not measured." :
        `from ${am.heldout_starts || "held-out"} held-out ${game} states, a key's action moves the world like the ` +
        `real game's control ${pct(acc)} of the time (chance ${pct(am.majority_baseline ?? 1 / 3)})` +
        (am.previous_accuracy != null ? `; the map it replaced: ${pct(am.previous_accuracy)}.` : "."));
    else if (am.method === "motion")
      text = "Keys are mapped by the scene motion of each latent action (the camera follows the player: " +
        "right moves the scene left, jump moves it down); not measured against a game.";
    else
      text = `Arrow keys use an action map learned from the true ${game} actions: ` +
        (acc == null ? "accuracy not measured." : `${pct(acc)} accurate on held-out transitions` +
          (am.majority_baseline != null ? ` (majority guess ${pct(am.majority_baseline)}).` : "."));
    $("accuracy").textContent = text;
    palette(w, byAction);
    const src = ready.sources;
    $("btn-level").disabled = !src.level; $("btn-level").title = src.level ? "a random CoinRun test level (L)" : src.level_reason;
    $("btn-clip").disabled = !src.clip; $("btn-clip").title = src.clip ? "a clip of the dataset (C)" : src.clip_reason;
    $("sessions").textContent = `session ${ready.sessions.used} of ${ready.sessions.max}`;
    if (src.level || src.clip) start("auto");
    else overlay("No built-in start frames here (" + (src.level_reason || "no procgen") +
                 "). Upload a PNG or JPEG to begin.", "Upload image", () => $("file").click());
  }

  // one entry per latent action: its number and keys, what it looks like, its preview strip
  function palette(w, byAction) {
    const am = w.action_map, effects = am.effects || {}, motion = am.motion || [], previews = am.previews || {};
    const NAMES = { left: "left", right: "right", jump: "jump", none: "no-op" };
    const box = $("palette");
    box.innerHTML = "";
    for (let a = 0; a < w.num_actions; a++) {
      const e = document.createElement("div");
      e.className = "entry"; e.id = `palette-${a}`;
      const keys = (byAction[a] || []).map((k) => `<kbd>${keyLabel(k)}</kbd>`).join(" ");
      const like = Object.keys(effects).filter((c) => effects[c][a] != null)
        .sort((x, y) => effects[y][a] - effects[x][a]).slice(0, 2)
        .map((c) => `${NAMES[c] || c} ${Math.round(100 * effects[c][a])}%`).join(", ");
      const m = motion[a], moves = [];
      if (m) {
        if (Math.abs(m[0]) >= 0.5) moves.push(`${m[0] > 0 ? "↓" : "↑"}${Math.abs(m[0]).toFixed(1)}`);
        if (Math.abs(m[1]) >= 0.5) moves.push(`${m[1] > 0 ? "→" : "←"}${Math.abs(m[1]).toFixed(1)}`);
      }
      const what = [like && `like the game's ${like}`, m && `scene ${moves.length ? moves.join(" ") + " px" : "still"}`]
        .filter(Boolean).join(" · ");
      e.innerHTML = `<div class="head"><span><b>${a + 1}</b> ${keys}</span></div>` +
        (previews[a] ? `<img src="${previews[a]}" alt="latent action ${a + 1} held from a start frame">` : "") +
        (what ? `<div class="what">${what}</div>` : "");
      box.appendChild(e);
    }
    $("palette-hint").classList.toggle("hidden", !Object.keys(previews).length && !Object.keys(effects).length);
  }

  // ------------------------------------------------------------------ sending
  function send(obj) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) { state.ws.send(JSON.stringify(obj)); return true; }
    return false;
  }
  function start(source) {
    state.inFlight = true; state.sentAt = performance.now();
    if (!send({ type: "start", source })) state.inFlight = false;
    $("source").textContent = source === "clip" ? "loading a dataset clip…" : "making a level…";
  }
  const world = () => (state.ready ? state.ready.world : null);
  function heldAction() { return UI.heldAction(state, world()); }
  function canStep() {
    return state.ready && state.started && !state.inFlight && state.ws && state.ws.readyState === WebSocket.OPEN;
  }
  function sendStep(action) {
    if (!canStep()) return false;
    state.inFlight = true;
    state.sentAt = performance.now(); state.lastSent = state.sentAt;
    send({ type: "step", action });
    UI.markAction(action);
    return true;
  }
  function tick() {
    state.timer = null;
    if (state.paused || !canStep()) return;
    const a = heldAction();
    sendStep(a === null ? state.noop : a);
  }
  function schedule() {
    if (state.timer !== null || state.paused) return;
    const wait = Math.max(0, state.lastSent + state.tickMs - performance.now());
    state.timer = setTimeout(tick, wait);
  }

  // ------------------------------------------------------------------ receiving
  function onFrame(buf) {
    const view = new DataView(buf);
    if (buf.byteLength < HEADER_BYTES || view.getUint8(0) !== 1) return;
    const flags = view.getUint8(1), h = view.getUint16(2, true), w = view.getUint16(4, true);
    const action = view.getInt16(6, true), index = view.getUint32(8, true), ms = view.getFloat32(12, true);
    const rgb = new Uint8Array(buf, HEADER_BYTES);
    if (rgb.length !== h * w * 3) return;
    frameCanvas.draw(rgb, h, w);

    const now = performance.now();
    if (flags & FLAG_START) { state.started = true; hideOverlay(); }
    else {
      const rtt = now - state.sentAt;
      state.latency = state.latency === null ? rtt : 0.8 * state.latency + 0.2 * rtt;
      $("latency").textContent = state.latency.toFixed(1);
    }
    if (flags & FLAG_RECORDING) { state.recorded += 1; updateRecording(); }
    state.frames += 1; state.frameTimes.push(now);
    state.inFlight = false;
    $("frame-index").textContent = String(index);
    $("frame-count").textContent = String(state.frames);
    $("server-ms").textContent = ms.toFixed(1);
    $("last-action").textContent = action < 0 ? "start" : String(action + 1);
    schedule();
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "ready": setup(msg); break;
      case "started": {
        const d = msg.detail || {};
        $("source").textContent = msg.source === "level" ? `CoinRun test level ${d.level} (${d.mode})`
          : msg.source === "clip" ? `dataset episode ${d.episode}, frames ${d.start}…${d.start + d.frames - 1}`
          : `your image (${d.bytes} bytes)`;
        break;
      }
      case "recording":
        state.recording = msg.on; state.recorded = msg.frames; state.downloads = msg.download;
        if (msg.reason === "limit") toast(`Recording stopped at its limit of ${msg.max} frames.`);
        updateRecording();
        break;
      case "pong": break;
      case "error":
        state.inFlight = false;
        if (msg.code === "full") { state.closedByServer = msg.message; overlay(msg.message, "Try again", () => location.reload()); }
        else if (msg.code === "no_source" && !state.started) {
          overlay(msg.message, "Upload image", () => $("file").click());
        } else toast(msg.message);
        schedule();
        break;
      default: break;
    }
  }

  function updateRecording() {
    $("btn-record").textContent = state.recording ? "Stop" : "Record";
    $("btn-record").classList.toggle("on", state.recording);
    $("rec-badge").classList.toggle("hidden", !state.recording);
    $("rec-frames").textContent = String(state.recorded);
    const have = state.recorded > 0 && state.downloads;
    $("btn-gif").disabled = !have; $("btn-mp4").disabled = !have;
    $("record-info").textContent = state.recorded
      ? `${state.recorded} frame${state.recorded === 1 ? "" : "s"} recorded${state.recording ? "…" : ""}`
      : state.recording ? "recording…" : "nothing recorded";
  }

  // ------------------------------------------------------------------ connection
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    setConn("connecting");
    ws.onopen = () => setConn("connected", "ok");
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } }
      else onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      state.started = false; state.inFlight = false;
      setConn(ev.code === 1013 ? "full" : "disconnected", "bad");
      if (!state.closedByServer) overlay(`Disconnected from the server${ev.reason ? " (" + ev.reason + ")" : ""}.`,
        "Reconnect", () => location.reload());
    };
  }

  // ------------------------------------------------------------------ input
  UI.bindKeys(state, {
    world,
    // paused: a key press plays one frame; playing: the next tick picks the key up
    onActionKey: (e) => {
      if (state.paused && !e.repeat) { const a = heldAction(); if (a !== null) sendStep(a); }
      else schedule();
    },
    shortcuts: { p: "btn-pause", n: "btn-step", r: "btn-reset", l: "btn-level", c: "btn-clip",
      u: "btn-upload", v: "btn-record" },
  });

  function pressButton(a) {
    state.heldButton = a;
    if (state.paused) sendStep(a); else schedule();
  }
  function releaseButton() { state.heldButton = null; }

  $("btn-pause").addEventListener("click", () => {
    state.paused = !state.paused;
    UI.showPaused(state.paused);
    if (!state.paused) schedule();
  });
  $("btn-step").addEventListener("click", () => {
    const a = heldAction();
    sendStep(a === null ? state.noop : a);
  });
  $("btn-reset").addEventListener("click", () => {
    if (!state.started) return;
    state.inFlight = true; state.sentAt = performance.now();
    send({ type: "restart" });
  });
  $("btn-level").addEventListener("click", () => start("level"));
  $("btn-clip").addEventListener("click", () => start("clip"));
  UI.bindImageInput(upload);
  $("btn-record").addEventListener("click", () => send({ type: "record", on: !state.recording }));
  function download(fmt) {
    if (!state.downloads) return;
    const a = document.createElement("a");
    a.href = state.downloads[fmt]; a.download = ""; document.body.appendChild(a); a.click(); a.remove();
  }
  $("btn-gif").addEventListener("click", () => download("gif"));
  $("btn-mp4").addEventListener("click", () => download("mp4"));

  async function upload(file) {
    const limit = state.ready ? state.ready.limits.max_upload_bytes : Infinity;
    if (!/^image\/(png|jpeg)$/.test(file.type) && !/\.(png|jpe?g)$/i.test(file.name)) {
      toast(`${file.name} is not a PNG or JPEG image.`); return;
    }
    if (file.size > limit) { toast(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(limit / 1e6).toFixed(1)} MB.`); return; }
    const buf = await file.arrayBuffer();
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    state.inFlight = true; state.sentAt = performance.now();
    $("source").textContent = `uploading ${file.name}…`;
    state.ws.send(buf);
  }

  setInterval(() => { $("fps").textContent = currentFps().toFixed(1); }, 250);
  connect();
})();
