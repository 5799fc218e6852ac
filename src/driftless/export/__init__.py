"""Exports of a World for playing without Python (`driftless export onnx|web`).

* `export/onnx.py`: the ONNX graphs a player needs - the encoder (a start image -> latents)
  and one whole play frame (sample + commit + decode) with the KV ring buffers and the noise
  as explicit inputs and outputs - their manifest, a small ONNX Runtime player, and the
  numerical check against the PyTorch World.
* `export/web.py`: a self-contained static folder that plays the world in a browser with
  onnxruntime-web (WebAssembly, WebGPU where the browser has it); the page lives in
  `export/static/`.

This package sits between `cli` and `serve` (it uses `world`, and `serve`'s start frames and
image loading); only `cli` imports it (tests/test_layering.py, rule i).
"""

from driftless.export.onnx import OnnxPlayer, check_against_torch, export_onnx

__all__ = ["OnnxPlayer", "check_against_torch", "export_onnx"]
