// driftless: what the two play pages share - the play server's page (app.js) and the static page of
// `driftless export web` (play.js, which gets a copy of this file). A plain script, loaded before the
// page's own; it defines one global, window.DriftlessUI, and its functions take what they need as
// arguments (the page's state, its world). Both pages use the same element ids (see their index.html).
"use strict";

window.DriftlessUI = (() => {
  const $ = (id) => document.getElementById(id);
  const KEY_LABELS = { ArrowLeft: "←", ArrowRight: "→", ArrowUp: "↑", ArrowDown: "↓", " ": "Space" };
  const GAME_KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", " "]);

  // ------------------------------------------------------------------ messages
  // -> toast(text): shows text in #toast for `ms` milliseconds (a newer one replaces it)
  function toaster(ms) {
    let timer = null;
    return (text) => {
      const t = $("toast");
      t.textContent = text;
      t.classList.remove("hidden");
      clearTimeout(timer);
      timer = setTimeout(() => t.classList.add("hidden"), ms);
    };
  }
  function overlay(text, buttonLabel, onClick) {
    $("overlay-text").textContent = text;
    const b = $("overlay-button");
    if (buttonLabel) { b.textContent = buttonLabel; b.onclick = onClick; b.classList.remove("hidden"); }
    else b.classList.add("hidden");
    $("overlay").classList.remove("hidden");
  }
  function hideOverlay() { $("overlay").classList.add("hidden"); }
  function keyLabel(k) { return KEY_LABELS[k] || k; }
  // frames shown in the last second; drops older times from `frameTimes` (performance.now() values)
  function currentFps(frameTimes) {
    const now = performance.now();
    while (frameTimes.length && now - frameTimes[0] > 1000) frameTimes.shift();
    return frameTimes.length;
  }

  // ------------------------------------------------------------------ the screen
  // the canvas, drawn from raw RGB frames at an integer scale (crisp pixels, smoothing off)
  function screen(canvas) {
    const ctx = canvas.getContext("2d", { alpha: false });
    const off = document.createElement("canvas");
    const offCtx = off.getContext("2d");
    let image = null;
    return {
      // frames of h x w pixels from now on; clears the screen to black
      resize(h, w) {
        off.width = w; off.height = h;
        image = offCtx.createImageData(w, h);
        const scale = Math.max(1, Math.floor(512 / Math.max(w, h)));
        canvas.width = w * scale; canvas.height = h * scale;
        ctx.imageSmoothingEnabled = false;
        ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      },
      // rgb: h * w * 3 bytes; given h and w, a frame of another size than the screen's is drawn stretched
      draw(rgb, h, w) {
        if (h !== undefined && (!image || image.width !== w || image.height !== h)) {
          off.width = w; off.height = h; image = offCtx.createImageData(w, h);
        }
        const px = image.data;
        for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
          px[j] = rgb[i]; px[j + 1] = rgb[i + 1]; px[j + 2] = rgb[i + 2]; px[j + 3] = 255;
        }
        offCtx.putImageData(image, 0, 0);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
      },
    };
  }

  // ------------------------------------------------------------------ the panel
  // the world's name and no-op action; the screen sized for its frames
  function showWorld(w, scr) {
    $("world-name").textContent = `${w.name} · ${w.resolution[0]}×${w.resolution[1]} · ${w.num_actions} actions`;
    $("noop").textContent = String(w.noop + 1);
    scr.resize(w.resolution[0], w.resolution[1]);
  }

  // one button per latent action in #actions (press(a) on pointer down, release() on up or leave)
  // -> {action: [its keys]}
  function actionButtons(numActions, keyMap, press, release) {
    const byAction = {};
    for (const [k, a] of Object.entries(keyMap)) (byAction[a] = byAction[a] || []).push(k);
    const actions = $("actions");
    actions.innerHTML = "";
    for (let a = 0; a < numActions; a++) {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.action = String(a); b.id = `action-${a}`;
      const keys = (byAction[a] || []).map(keyLabel).join(" ");
      b.innerHTML = `${a + 1}<small>${keys || "&nbsp;"}</small>`;
      b.title = `latent action ${a} (key ${a + 1}${keys ? ", " + keys : ""})`;
      b.addEventListener("pointerdown", (e) => { e.preventDefault(); press(a); });
      b.addEventListener("pointerup", release);
      b.addEventListener("pointerleave", release);
      actions.appendChild(b);
    }
    return byAction;
  }
  function markAction(action) {
    for (const b of document.querySelectorAll(".actions button"))
      b.classList.toggle("active", Number(b.dataset.action) === action);
  }

  // one legend row per latent action reachable from the keyboard: its keys and control (and, given
  // keyAccuracy {key: fraction}, how often the key's action moves the world like the real control)
  function legend(numActions, keyMap, keyAccuracy) {
    const n = numActions;
    const rows = [[`<kbd>1</kbd>…<kbd>${Math.min(n, 9)}</kbd> <span class="dim">latent actions</span>`,
      `1…${Math.min(n, 9)}`]];
    const CONTROL = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "jump", " ": "jump", ArrowDown: "no-op" };
    const order = ["ArrowLeft", "ArrowRight", "ArrowUp", " ", "ArrowDown"];
    const mapped = Object.keys(keyMap).sort((a, b) => order.indexOf(a) - order.indexOf(b));
    const seen = new Set();
    for (const k of mapped) {
      const a = keyMap[k], ctl = CONTROL[k] || k, id = `${a}:${ctl}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const same = mapped.filter((j) => keyMap[j] === a && (CONTROL[j] || j) === ctl);
      const kacc = (keyAccuracy || {})[k];
      rows.push([`${same.map((j) => `<kbd>${keyLabel(j)}</kbd>`).join(" ")} <span class="dim">${ctl}</span>`,
        `action ${a + 1}` + (kacc != null ? ` <span class="dim">${Math.round(100 * kacc)}%</span>` : "")]);
    }
    $("legend").tBodies[0].innerHTML = rows.map(([a, b]) => `<tr><td>${a}</td><td>${b}</td></tr>`).join("");
  }

  function showPaused(p) {
    $("btn-pause").textContent = p ? "Resume" : "Pause";
    $("paused-badge").classList.toggle("hidden", !p);
  }

  // ------------------------------------------------------------------ input
  // state: {held: [keys, oldest first], heldButton: action or null}; w: the world, or null before it is known
  // -> the action to play, or null. The action button held wins, then the most recent held key;
  // right/left + jump use the combined group when the map has one
  function heldAction(state, w) {
    const am = (w && w.action_map) || {}, keys = am.keys || {}, groups = am.groups || {};
    if (state.heldButton !== null) return state.heldButton;
    const h = state.held;
    const jump = h.includes("ArrowUp") || h.includes(" ");
    if (jump && h.includes("ArrowRight") && groups.right_jump !== undefined) return groups.right_jump;
    if (jump && h.includes("ArrowLeft") && groups.left_jump !== undefined) return groups.left_jump;
    for (let i = h.length - 1; i >= 0; i--) {
      const k = h[i];
      if (/^[1-9]$/.test(k) && w && Number(k) <= w.num_actions) return Number(k) - 1;
      if (k in keys) return keys[k];
    }
    return null;
  }
  function isActionKey(k, w) {
    return GAME_KEYS.has(k) || (/^[1-9]$/.test(k) && !!w && Number(k) <= w.num_actions);
  }

  // the keyboard: action keys (arrows, space, 1-9) are held in state.held and onActionKey(event) is
  // called; another key clicks its button in `shortcuts` ({lower-case key: button id}) unless disabled.
  // world(): the world or null; enabled(): whether keys count yet
  function bindKeys(state, { world, onActionKey, shortcuts, enabled = () => true }) {
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || !enabled()) return;
      const k = e.key;
      if (isActionKey(k, world())) {
        e.preventDefault();
        if (!state.held.includes(k)) state.held.push(k);
        onActionKey(e);
        return;
      }
      if (e.repeat) return;
      const click = shortcuts[k.toLowerCase()];
      if (click && !$(click).disabled) { e.preventDefault(); $(click).click(); }
    });
    document.addEventListener("keyup", (e) => { state.held = state.held.filter((k) => k !== e.key); });
    window.addEventListener("blur", () => { state.held = []; state.heldButton = null; });
  }

  // an image of the player's: the Image… button (#btn-upload, #file) or one dropped on the screen
  function bindImageInput(onFile) {
    $("btn-upload").addEventListener("click", () => $("file").click());
    $("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) onFile(f); $("file").value = ""; });
    const wrap = $("screen-wrap");
    wrap.addEventListener("dragover", (e) => { e.preventDefault(); wrap.classList.add("dragging"); });
    wrap.addEventListener("dragleave", () => wrap.classList.remove("dragging"));
    wrap.addEventListener("drop", (e) => {
      e.preventDefault(); wrap.classList.remove("dragging");
      const f = e.dataTransfer.files[0]; if (f) onFile(f);
    });
  }

  return Object.freeze({
    $, KEY_LABELS, keyLabel, toaster, overlay, hideOverlay, currentFps, screen, showWorld, actionButtons,
    markAction, legend, showPaused, heldAction, isActionKey, bindKeys, bindImageInput,
  });
})();
