"""Play a world on the CPU with ONNX Runtime, from a folder of `driftless export onnx`.

On a CPU the exported step graph (all denoising steps, the KV ring-buffer update and the decode
of one frame, unrolled) runs about twice as fast under ONNX Runtime as the eager PyTorch session
(docs/benchmarks.md, section 4), so `driftless play --backend onnx` plays through it:

* `OnnxPlayer`: the graphs of one export folder and one session's state: `reset(frame)` and
  `step(action)`, the calls the web page makes (numpy in, numpy out).
* `OnnxWorld`: the session calls of a `World` (`reset`, `step`, `end_session`) answered by an
  `OnnxPlayer`, with the PyTorch world for what the graphs do not cover: a start clip of several
  frames is encoded as a clip by the tokenizer and its transitions labelled by the LAM, as
  `World.reset` does, and its frames are then committed one by one through the graph.

The sampling options (steps, eta, guidance, context noise) are baked into the step graph when it
is exported; asking an `OnnxWorld` for other ones is an error, not a silent change. History
guidance is not exported (the export refuses it): asking for it is an error too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FORMAT = "driftless-onnx"
MANIFEST = "manifest.json"
NP_DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_, "uint8": np.uint8}


def initial_state(manifest: dict) -> dict[str, np.ndarray]:
    """The state inputs of a fresh session: zeros (position 0, empty ring buffers)."""
    step = manifest["graphs"]["step"]
    spec = {i["name"]: i for i in step["inputs"]}
    return {name: np.zeros(spec[name]["shape"], NP_DTYPES[spec[name]["dtype"]])
            for name in [*step["state"], *step.get("writes", {})]}


def carry_state(state: dict, outputs: dict, step: dict) -> dict:
    """The state after one call of the step graph (manifest `graphs.step`): the small state from its
    `<name>_out` outputs; each KV buffer of `writes` (numpy arrays or torch tensors) written in place
    with the call's `<name>_new` at the slot the call was fed, along `axis` (exports of version 1
    return whole buffers as `_out` state instead)."""
    new = {name: outputs[out_name] for name, out_name in step["state"].items()}
    for name, w in step.get("writes", {}).items():
        buf, axis = state[name], int(w["axis"])
        slot = int(state[w["slot"]])  # the slot this call wrote (fed in; its `_out` has moved on)
        at = (slice(None),) * axis + (slice(slot, slot + 1),)
        buf[at] = outputs[w["output"]]
        new[name] = buf
    return new



class OnnxPlayer:
    """Plays an exported folder with ONNX Runtime (CPU): the same calls the web page makes."""

    def __init__(self, folder: str | Path, threads: int = 1, seed: int = 0, graphs: OnnxPlayer | None = None):
        """`graphs`: another player of the same folder whose ONNX Runtime sessions this one shares
        (a session is safe to run from several threads; each player keeps its own state)."""
        if graphs is not None:
            self.manifest, self.encoder, self.session = graphs.manifest, graphs.encoder, graphs.session
            self.outputs, self.noise_shape, self.batch = graphs.outputs, graphs.noise_shape, graphs.batch
            self.rng = np.random.default_rng(seed)
            self.state = None
            return
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError('playing an ONNX export in Python needs onnxruntime: pip install "driftless[export]"') \
                from e
        folder = Path(folder)
        self.manifest = json.loads((folder / MANIFEST).read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{folder} is not a driftless ONNX export (no {MANIFEST} of format {FORMAT!r})")
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        graphs = self.manifest["graphs"]
        self.encoder = ort.InferenceSession(str(folder / graphs["encoder"]["file"]), so,
                                            providers=["CPUExecutionProvider"])
        self.session = ort.InferenceSession(str(folder / graphs["step"]["file"]), so, providers=["CPUExecutionProvider"])
        self.rng = np.random.default_rng(seed)
        self.state: dict[str, np.ndarray] | None = None
        spec = {i["name"]: i for i in graphs["step"]["inputs"]}
        self.outputs = [o["name"] for o in graphs["step"]["outputs"]]
        self.noise_shape = tuple(spec["noise"]["shape"])
        self.batch = self.manifest["batch"]

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (b, 1, H, W, 3) -> normalised latents (b, 1, s, c)."""
        return self.encoder.run(None, {"frames": np.ascontiguousarray(frames, dtype=np.uint8)})[0]

    def noise(self) -> np.ndarray:
        return self.rng.standard_normal(self.noise_shape).astype(np.float32)

    def run(self, action, start: bool, given: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One call of the step graph; carries the state over. -> (frame (b, H, W, 3), latents)."""
        if self.state is None:
            raise ValueError("no session: call reset(frame) first")
        feed = {"action": np.broadcast_to(np.asarray(action, dtype=np.int64), (self.batch,)).copy(),
                "start": np.array(start), "given": given.astype(np.float32),
                "noise": self.noise() if noise is None else np.asarray(noise, dtype=np.float32), **self.state}
        out = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        self.state = carry_state(self.state, out, self.manifest["graphs"]["step"])
        return out["frame"], out["latents"]

    def reset(self, frame: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Start from a uint8 frame (H, W, 3) or (b, H, W, 3); -> its normalised latents."""
        frame = np.asarray(frame, dtype=np.uint8)
        frames = np.broadcast_to(frame if frame.ndim == 4 else frame[None], (self.batch,) + frame.shape[-3:])
        given = self.encode(frames[:, None])
        self.state = initial_state(self.manifest)
        self.run(self.manifest["world"]["null_action"], True, given, noise)
        return given

    def step(self, action, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (the next frame uint8 (b, H, W, 3), its latents (b, 1, s, c))."""
        s = self.noise_shape
        return self.run(action, False, np.zeros((s[1],) + s[2:], np.float32), noise)


class OnnxWorld:
    """A `World`'s session calls played by ONNX Runtime; see the module docstring."""

    def __init__(self, world, folder: str | Path | None = None, threads: int = 1, graphs: OnnxPlayer | None = None):
        self.world = world
        self.player = OnnxPlayer(folder or "", threads=threads, graphs=graphs)  # `folder` unread with `graphs`
        m = self.player.manifest
        if self.player.batch != 1:
            raise ValueError(f"an OnnxWorld plays one session per graph call: export with batch 1, not {self.player.batch}")
        mine = m.get("world", {})
        if tuple(mine.get("resolution", ())) != tuple(world.resolution) or \
                int(mine.get("num_actions", -1)) != int(world.num_actions):
            raise ValueError(f"the ONNX export is of another world (resolution {mine.get('resolution')}, "
                             f"{mine.get('num_actions')} actions; this world: {list(world.resolution)}, "
                             f"{world.num_actions}): export this world again")
        self.steps = int(m["sampling"]["steps"])
        self.null = int(mine["null_action"])
        self.resolution = world.resolution
        self.num_actions = world.num_actions

    def _check(self, sampling: dict) -> None:
        steps = sampling.get("steps")
        other = {k: v for k, v in sampling.items() if k != "steps" and v is not None}
        if "window" in other and int(other["window"]) == int(self.player.manifest["sampling"]["window"]):
            del other["window"]  # the window the graph was exported with
        if other.get("history_guidance", 1.0) != 1.0:
            raise ValueError(f"an ONNX export cannot sample with history guidance (history_guidance "
                             f"{other['history_guidance']}): play with --backend torch")
        if (steps is not None and int(steps) != self.steps) or other:
            raise ValueError(f"this ONNX export samples with the options it was exported with ({self.steps} steps); "
                             f"asked for {sampling}: export again with those options, or play with --backend torch")

    @torch.no_grad()
    def reset(self, context, seed: int = 0, actions=None, **sampling) -> np.ndarray:
        """Start from uint8 frames (T0, H, W, 3) (or one frame (H, W, 3)); returns the last one (as
        given, like `World.reset`)."""
        self._check(sampling)
        w = self.world
        context = np.asarray(context, dtype=np.uint8)
        video, _ = w._video(context[None] if context.ndim == 3 else context, "context")  # (1, t0, H, W, 3) on the world's device, checked
        if video.shape[0] != 1:
            raise ValueError(f"an OnnxWorld plays one session: context must be (T0, H, W, 3), got {tuple(video.shape)}")
        video = video[:, -int(self.player.manifest["sampling"]["window"]):]  # the window the graph was exported with
        t0 = video.shape[1]
        _, z = w._dynamics_inputs(video)  # normalised latents (1, t0, s, c), the clip encoded as a clip
        z = z.float().cpu().numpy()
        per_frame = w._context_actions(video, actions)
        per_frame = (np.full(t0, self.null, np.int64) if per_frame is None else per_frame[0].cpu().numpy())
        p = self.player
        p.rng = np.random.default_rng(int(seed))
        p.state = initial_state(p.manifest)
        for i in range(t0):
            p.run(per_frame[i], True, z[:, i:i + 1], None)
        return np.ascontiguousarray(video[0, -1].cpu().numpy())

    def step(self, action=None, **sampling) -> np.ndarray:
        """The next frame uint8 (H, W, 3) under a latent action (None: the null action)."""
        self._check(sampling)
        frame, _ = self.player.step(self.null if action is None else int(np.asarray(action).reshape(-1)[0]))
        return np.ascontiguousarray(frame[0])

    def end_session(self) -> None:
        self.player.state = None
