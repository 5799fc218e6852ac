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
synchronisation in its sampler, an old torch), the session carries on eagerly and
`FrameGraph.error` says why.
"""

from __future__ import annotations

from typing import Callable

import torch

WARMUP = 2


class FrameGraph:
    """Replays `make_frame()` - which reads the action from `self.action` and returns the new
    frame as a device tensor - as a CUDA graph once warmed up."""

    def __init__(self, make_frame: Callable[[], torch.Tensor], action: torch.Tensor | None,
                 generator: torch.Generator, device: torch.device):
        self.make_frame = make_frame
        self.action = action  # static input: (b,) int64 on the device, or None (unconditioned)
        self.generator = generator
        self.device = device
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

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            graph.register_generator_state(self.generator)
            with torch.cuda.graph(graph):
                self.out = self.make_frame()
        except Exception as e:  # noqa: BLE001 - any failure to record means: stay eager
            self.error = f"{type(e).__name__}: {e}"
            self.graph, self.out = None, None
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph
