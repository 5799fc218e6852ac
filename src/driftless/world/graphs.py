"""One frame of a play session as a CUDA graph: recorded once, replayed every step.

At batch 1 a frame is a few thousand small kernels (every denoising pass through every layer,
the KV-cache writes, the decoder step), and the GPU waits for the host to launch them: a
small world plays at ~25 frames/s on an H200 whatever its size. Recorded as a CUDA graph, the
whole frame is one launch.

What makes a frame recordable: the session's KV caches are `StaticKVCache`s (slot and validity
on the device, fixed shapes), positions are device counters, the sampler's constants (noise
tables, DDIM ladder) already live on the device, and the session's random generator is
registered with the graph, so each replay draws the next numbers exactly as the eager step
would. The first `WARMUP` frames of a session run eagerly (on a side stream, as CUDA graphs
need); the graph is recorded at the next frame. If recording fails (a frame model with host
synchronisation in its sampler, an old torch), the session carries on eagerly from the same random
state (a generator registered with a failed recording cannot draw again, so it is replaced by one at
the state it had before) and `FrameGraph.error` says why.

Nothing may free a CUDA graph while another is being recorded. A session's graph refers to its
session (the frame closure) and the session to its graph, so a replaced session is cyclic garbage,
and Python's collector, which torch no longer runs before a capture, could destroy its graph in the
middle of the next session's recording (seen on the H200: "operation not permitted when stream is
capturing (function reset)", then a crash). So the collector runs before a recording and is paused
during it, and `release()` frees a graph at once when its session ends.
"""

from __future__ import annotations

import gc
import warnings
from typing import Callable

import torch

WARMUP = 2


class FrameGraph:
    """Replays `make_frame()` - which reads the action from `self.action` and returns the new
    frame as a device tensor - as a CUDA graph once warmed up."""

    def __init__(self, make_frame: Callable[[], torch.Tensor], action: torch.Tensor | None,
                 generator: torch.Generator, device: torch.device,
                 on_new_generator: Callable[[torch.Generator], None] | None = None):
        self.make_frame = make_frame
        self.action = action  # static input: (b,) int64 on the device, or None (unconditioned)
        self.generator = generator
        self.device = device
        self.on_new_generator = on_new_generator  # told of the generator that replaces a broken one
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.error: str | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, action: torch.Tensor | None) -> torch.Tensor:
        if self.action is not None:
            self.action.copy_(action)
        if self.graph is None:
            if self.calls < WARMUP or self.error is not None:
                self.calls += 1
                return self._eager()
            self._capture()
            if self.graph is None:  # recording failed: this frame and the rest run eagerly
                return self._eager()
        self.graph.replay()
        return self.out

    def _eager(self) -> torch.Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.make_frame()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def release(self) -> None:
        """Free the recorded graph now (its session ended), not whenever the collector gets to it."""
        self.graph, self.out, self.make_frame = None, None, None

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        state = self.generator.get_state()
        gc.collect()  # dead sessions' graphs go now, not in the middle of this recording
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            graph.register_generator_state(self.generator)
            # thread_local: other sessions' threads (play --workers) keep launching while this records
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out = self.make_frame()
        except Exception as e:  # noqa: BLE001 - any failure to record means: stay eager
            self.error = f"{type(e).__name__}: {e}"
            self.graph, self.out = None, None
            del graph
            torch.cuda.synchronize(self.device)
            # the registered generator cannot draw outside a recording any more: continue from its state
            fresh = torch.Generator(device=self.device)
            fresh.set_state(state)
            self.generator = fresh
            if self.on_new_generator is not None:
                self.on_new_generator(fresh)
            warnings.warn(f"this session's frame could not be recorded as a CUDA graph, so it plays eagerly "
                          f"(slower): {self.error}", RuntimeWarning, stacklevel=3)
            return
        finally:
            if was_enabled:
                gc.enable()
        self.graph = graph
