// driftless: play an exported world in the page itself, with onnxruntime-web (ort/, copied from
// its npm package at export time). manifest.json says what the graphs take and give; see
// docs/playing.md ("Play without Python") and src/driftless/export/onnx.py.
//
// A frame is one run of step.onnx: sample the next frame from the past (held in KV ring
// buffers that the graph takes and gives back), commit it, decode it. The page only carries the
// state over, draws the noise (a seeded PRNG, Box-Muller) and draws the frame. What the page shares
// with the play server's page (messages, screen, action buttons, legend, keys) is ui.js, loaded before it.
"use strict";

(() => {
  const UI = window.DriftlessUI;
  const { $, overlay, hideOverlay } = UI;
  const params = new URLSearchParams(location.search);
  const ARRAYS = { float32: Float32Array, int64: BigInt64Array, bool: Uint8Array, uint8: Uint8Array };

  const state = {
    manifest: null, ep: null, threads: 1, ready: false, started: false, paused: false, held: [], heldButton: null,
    frames: 0, index: 0, frameTimes: [], ms: null, lastAction: null, noop: 0, tickMs: 1000 / 15, seed: 0,
    startIndex: 0, source: null, errors: 0, playStart: null, playFrames: 0, loadMs: null,
  };
  const pending = { start: null, steps: [] };
  const pauseAt = params.has("pause") ? Number(params.get("pause")) : null;
  window.driftless = {
    state,
    stats: () => ({
      ready: state.ready, started: state.started, paused: state.paused, frames: state.frames, index: state.index,
      fps: currentFps(), meanFps: meanFps(), ms: state.ms, ep: state.ep, threads: state.threads,
      lastAction: state.lastAction, errors: state.errors, seed: state.seed, loadMs: state.loadMs,
    }),
  };

  const frameCanvas = UI.screen($("screen"));
  let encoder = null, stepper = null, carried = null, rand = null;

  // ------------------------------------------------------------------ small helpers
  const toast = UI.toaster(6000);  // 6 s here, 5 s on the play server's page (as each page had it)
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function currentFps() { return UI.currentFps(state.frameTimes); }
  function meanFps() {
    if (state.playStart === null || state.playFrames < 2) return null;
    return (state.playFrames - 1) / ((performance.now() - state.playStart) / 1000);
  }

  // seeded noise: mulberry32 uniforms -> Box-Muller normals (the graph takes noise as an input, so
  // the page need not match PyTorch's generator; a seed replays a session exactly)
  function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  function normals(n) {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = Math.max(rand(), 1e-12), v = rand();
      const r = Math.sqrt(-2 * Math.log(u));
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  }
  const size = (shape) => shape.reduce((a, b) => a * b, 1);
  function zeros(spec) { return new ort.Tensor(spec.dtype, new ARRAYS[spec.dtype](size(spec.shape)), spec.shape); }
  function inputSpec(graph, name) { return state.manifest.graphs[graph].inputs.find((i) => i.name === name); }

  // ------------------------------------------------------------------ the model
  // WebGPU when the export has its runtime and the browser a GPU adapter, else WebAssembly; ?ep= forces one
  async function chooseBackend() {
    const have = (state.manifest.runtime || {}).backends || { wasm: { bundle: "ort.wasm.min.js" } };
    let ep = params.get("ep");
    if (!ep && have.webgpu && navigator.gpu) {
      try { if (await navigator.gpu.requestAdapter()) ep = "webgpu"; } catch (e) { /* no adapter: WebAssembly */ }
    }
    if (!ep || !have[ep]) ep = "wasm";
    await loadScript(`ort/${have[ep].bundle}`);  // a WebGPU bundle runs WebAssembly too (the fallback)
    return ep;
  }
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src; s.onload = resolve;
      s.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(s);
    });
  }

  async function createSessions(ep) {
    // logSeverityLevel 3: errors only (the WebGPU backend warns, as console errors, that it leaves shape
    // computations on the CPU - as it should)
    const opts = { executionProviders: [ep], graphOptimizationLevel: "all", logSeverityLevel: 3 };
    const g = state.manifest.graphs;
    // one after the other: the WebGPU backend refuses to create two sessions at once
    encoder = await ort.InferenceSession.create(g.encoder.file, opts);
    stepper = await ort.InferenceSession.create(g.step.file, opts);
    state.ep = ep;
  }

  // one frame on a black start image: the first run of a session sets itself up (and a backend
  // that cannot run the graph fails here, while there is still WebAssembly to fall back to)
  async function warmUp() {
    const [h, w] = state.manifest.world.resolution;
    const { latents } = await encoder.run({ frames: new ort.Tensor("uint8", new Uint8Array(h * w * 3), [1, 1, h, w, 3]) });
    freshState();
    rand = mulberry32(0);
    await runStep(state.manifest.world.null_action, true, latents);
    await runStep(state.manifest.world.noop, false, null);
  }

  function freshState() {
    carried = {};
    const step = state.manifest.graphs.step;
    for (const name of [...Object.keys(step.state), ...Object.keys(step.writes || {})]) {
      carried[name] = zeros(inputSpec("step", name));
    }
  }

  // the state after a step (export/onnx.py): the small state from its `_out` outputs; each KV buffer of
  // `writes` gets the call's `_new` keys or values written in place at the slot the call was fed
  function carryState(fed, out, step) {
    const next = {};
    for (const [name, outName] of Object.entries(step.state)) next[name] = out[outName];
    for (const [name, w] of Object.entries(step.writes || {})) {
      const buf = fed[name], upd = out[w.output].data, dims = buf.dims;
      const slot = Number(fed[w.slot].data[0]);
      const outer = dims.slice(0, w.axis).reduce((a, b) => a * b, 1);
      const inner = dims.slice(w.axis + 1).reduce((a, b) => a * b, 1);
      const cap = dims[w.axis];
      for (let i = 0; i < outer; i++) buf.data.set(upd.subarray(i * inner, (i + 1) * inner), (i * cap + slot) * inner);
      next[name] = buf;
    }
    return next;
  }

  async function runStep(action, start, given) {
    const m = state.manifest, noise = inputSpec("step", "noise");
    const feeds = {
      action: new ort.Tensor("int64", BigInt64Array.from([BigInt(action)]), [1]),
      start: new ort.Tensor("bool", Uint8Array.from([start ? 1 : 0]), []),
      given: given || zeros(inputSpec("step", "given")),
      noise: new ort.Tensor("float32", normals(size(noise.shape)), noise.shape),
      ...carried,
    };
    const t0 = performance.now();
    const out = await stepper.run(feeds);
    const ms = performance.now() - t0;
    carried = carryState(carried, out, m.graphs.step);
    return { rgb: out.frame.data, ms };
  }

  // ------------------------------------------------------------------ drawing
  const draw = (rgb) => frameCanvas.draw(rgb);  // always at the world's resolution
  function shown(ms) {
    const now = performance.now();
    state.frames += 1; state.frameTimes.push(now);
    if (ms !== null) {
      state.ms = state.ms === null ? ms : 0.8 * state.ms + 0.2 * ms;
      $("model-ms").textContent = state.ms.toFixed(1);
    }
    $("frame-index").textContent = String(state.index);
    $("last-action").textContent = state.lastAction === null ? "start" : String(state.lastAction + 1);
  }

  // an image (any size) -> RGB bytes at the world's resolution: center crop to its aspect, then resize
  function toRgb(img) {
    const [h, w] = state.manifest.world.resolution;
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const cx = c.getContext("2d", { willReadFrequently: true });
    const iw = img.naturalWidth || img.width, ih = img.naturalHeight || img.height;
    const scale = Math.max(w / iw, h / ih), cw = w / scale, ch = h / scale;
    cx.imageSmoothingQuality = "high";
    cx.drawImage(img, (iw - cw) / 2, (ih - ch) / 2, cw, ch, 0, 0, w, h);
    const rgba = cx.getImageData(0, 0, w, h).data, rgb = new Uint8Array(w * h * 3);
    for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) {
      rgb[i] = rgba[j]; rgb[i + 1] = rgba[j + 1]; rgb[i + 2] = rgba[j + 2];
    }
    return rgb;
  }
  async function loadImage(url) {
    const img = new Image();
    img.src = url;
    await img.decode();
    return img;
  }

  // ------------------------------------------------------------------ a session
  async function doStart(start) {
    const [h, w] = state.manifest.world.resolution;
    const frames = new ort.Tensor("uint8", start.rgb, [1, 1, h, w, 3]);
    const { latents } = await encoder.run({ frames });
    freshState();
    rand = mulberry32(state.seed);
    $("seed").textContent = String(state.seed);
    const { ms } = await runStep(state.manifest.world.null_action, true, latents);  // commit the start frame
    state.index = 0; state.lastAction = null; state.started = true; state.source = start;
    state.playStart = null; state.playFrames = 0;
    draw(start.rgb);  // the start frame as it is (World.reset returns it too)
    shown(ms);
    $("source").textContent = start.label;
    for (const b of document.querySelectorAll("#starts button"))
      b.classList.toggle("active", Number(b.dataset.index) === start.index);
    hideOverlay();
  }

  async function doStep(action) {
    const { rgb, ms } = await runStep(action, false, null);
    state.index += 1; state.lastAction = action;
    draw(rgb);
    if (state.playStart === null) state.playStart = performance.now();
    state.playFrames += 1;
    shown(ms);
    if (pauseAt !== null && state.index === pauseAt) setPaused(true);  // ?pause=K (tests, screenshots)
    UI.markAction(action);
  }

  const world = () => (state.manifest ? state.manifest.world : null);
  function heldAction() { return UI.heldAction(state, world()); }

  // one loop makes every model call, so calls never overlap: a start, a requested step (paused),
  // or a frame per tick while playing
  async function loop() {
    for (;;) {
      const t0 = performance.now();
      let ran = false;
      try {
        if (pending.start) {
          const s = pending.start; pending.start = null;
          await doStart(s); ran = true;
        } else if (state.started && state.paused && pending.steps.length) {
          await doStep(pending.steps.shift()); ran = true;
        } else if (state.started && !state.paused) {
          const a = heldAction();
          await doStep(a === null ? state.noop : a); ran = true;
        }
      } catch (e) {
        state.errors += 1;
        console.error(e);
        toast(`The model failed: ${e && e.message ? e.message : e}`);
        setPaused(true);
      }
      const wait = ran ? state.tickMs - (performance.now() - t0) : 20;
      await sleep(Math.max(0, wait));
    }
  }

  function setPaused(p) {
    if (state.paused && !p) { state.playStart = null; state.playFrames = 0; }  // mean FPS: since resuming
    state.paused = p;
    UI.showPaused(p);
  }
  function requestStep(a) { if (state.started && pending.steps.length < 8) pending.steps.push(a); }

  async function startFrom(index) {
    const list = state.manifest.start_frames || [];
    if (!list.length) return;
    const i = ((index % list.length) + list.length) % list.length;
    const entry = list[i];
    state.startIndex = i;
    const img = await loadImage(entry.file);
    pending.start = { rgb: toRgb(img), label: entry.label, index: i };
  }
  async function startFromFile(file) {
    if (!/^image\//.test(file.type) && !/\.(png|jpe?g)$/i.test(file.name)) {
      toast(`${file.name} is not a PNG or JPEG image.`); return;
    }
    const url = URL.createObjectURL(file);
    try {
      const img = await loadImage(url);
      pending.start = { rgb: toRgb(img), label: `your image ${file.name}`, index: -1 };
    } catch (e) { toast(`Could not read ${file.name} as an image.`); }
    finally { URL.revokeObjectURL(url); }
  }

  // ------------------------------------------------------------------ page setup
  function setupUi() {
    const m = state.manifest, w = m.world;
    state.noop = w.noop;
    const fps = params.has("fps") ? Number(params.get("fps")) : 15;
    state.tickMs = fps > 0 ? 1000 / fps : 0;
    $("tick").textContent = fps > 0 ? String(fps) : "as many as it can make";
    UI.showWorld(w, frameCanvas);
    const keyMap = w.action_map.keys || {};
    UI.actionButtons(w.num_actions, keyMap,
      (a) => { state.heldButton = a; if (state.paused) requestStep(a); },
      () => { state.heldButton = null; });
    UI.legend(w.num_actions, keyMap);  // without the per-key accuracy the server's page shows
    const acc = w.action_map.accuracy, pct = (x) => `${(100 * x).toFixed(1)}%`;
    $("accuracy").textContent = !Object.keys(keyMap).length
      ? "This world has no action map: play with the number keys."
      : "Arrow keys use an action map learned from true actions: " +
        (acc == null ? "accuracy not measured." : `${pct(acc)} accurate on held-out transitions` +
          (w.action_map.majority_baseline != null ? ` (majority guess ${pct(w.action_map.majority_baseline)}).` : "."));

    const starts = $("starts");
    (m.start_frames || []).forEach((s, i) => {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.index = String(i); b.title = s.label;
      b.innerHTML = `<img alt="${s.label}" src="${s.file}">`;
      b.addEventListener("click", () => startFrom(i));
      starts.appendChild(b);
    });
    const rt = m.runtime || {};
    $("runtime").textContent = `${rt.package || "onnxruntime-web"} ${rt.version || ""}`;
  }

  UI.bindKeys(state, {
    world,
    enabled: () => state.ready,  // not while the world loads
    // paused: a key press plays one frame; playing: the loop picks the key up
    onActionKey: (e) => { if (state.paused && !e.repeat) { const a = heldAction(); if (a !== null) requestStep(a); } },
    shortcuts: { p: "btn-pause", n: "btn-step", r: "btn-reset", s: "btn-next", u: "btn-upload" },
  });

  $("btn-pause").addEventListener("click", () => setPaused(!state.paused));
  $("btn-step").addEventListener("click", () => {
    const a = heldAction();
    requestStep(a === null ? state.noop : a);
  });
  $("btn-reset").addEventListener("click", () => {
    if (!state.source) return;
    state.seed = (state.seed + 1) >>> 0;
    pending.start = state.source;
  });
  $("btn-next").addEventListener("click", () => startFrom(state.startIndex + 1));
  UI.bindImageInput(startFromFile);
  setInterval(() => {
    $("fps").textContent = currentFps().toFixed(1);
    const mean = meanFps();
    $("mean-fps").textContent = mean === null ? "–" : mean.toFixed(1);
  }, 250);

  async function main() {
    const t0 = performance.now();
    try {
      state.manifest = await (await fetch("manifest.json")).json();
      if (state.manifest.batch !== 1) throw new Error(`this page plays batch-1 exports; this one has batch ${state.manifest.batch}`);
      state.seed = params.has("seed") ? Number(params.get("seed")) >>> 0
        : crypto.getRandomValues(new Uint32Array(1))[0];
      setupUi();
      const mb = (state.manifest.graphs.step.bytes + state.manifest.graphs.encoder.bytes) / 1e6;
      overlay(`loading the world (${mb.toFixed(1)} MB)…`);
      const ep = await chooseBackend();
      ort.env.logLevel = "error";
      ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
      // several threads need a cross-origin isolated page (COOP/COEP headers), which a plain static host
      // does not give; on a busy machine one thread was also the faster (docs/benchmarks.md)
      state.threads = params.has("threads") && self.crossOriginIsolated ? Number(params.get("threads")) : 1;
      ort.env.wasm.numThreads = state.threads;
      try {
        await createSessions(ep);
        await warmUp();
      } catch (e) {
        if (ep === "wasm") throw e;
        console.warn(`${ep} is not usable here (${e.message || e}); running on WebAssembly`);
        await createSessions("wasm");
        await warmUp();
      }
      $("backend").textContent = state.ep === "wasm" ? `WebAssembly · ${state.threads} thread${state.threads > 1 ? "s" : ""}`
        : state.ep;
      $("backend").className = "pill ok";
      state.loadMs = performance.now() - t0;
      state.ready = true;
      if ((state.manifest.start_frames || []).length) {
        overlay("starting…");
        await startFrom(params.has("start") ? Number(params.get("start")) : 0);
      } else {
        overlay("This export has no start frames. Upload a PNG or JPEG to begin.", "Upload image",
          () => $("file").click());
      }
    } catch (e) {
      state.errors += 1;
      console.error(e);
      overlay(`Could not load the world: ${e && e.message ? e.message : e}`);
      $("backend").textContent = "failed"; $("backend").className = "pill bad";
      return;
    }
    loop();
  }
  main();
})();
