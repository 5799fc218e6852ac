"""Benchmarks: FLOP counting against hand counts, statistics, peak lookup, and both bench verbs
end to end on the debug presets on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from driftless.eval.bench import (GenerateBenchConfig, TrainBenchConfig, bench_generate, bench_train, count_flops,
                                  peak_key, resolve_peak, stats)


def test_stats_median_and_iqr():
    s = stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q25"], s["q75"], s["iqr"], s["min"], s["max"], s["n"]) == (3, 2, 4, 2, 1, 5, 5)


def test_flops_of_a_linear_layer_forward_and_backward():
    b, i, o = 16, 32, 24
    layer = torch.nn.Linear(i, o)
    x = torch.randn(b, i, requires_grad=True)

    def step():
        layer(x).sum().backward()

    # forward 2*b*i*o; backward: grad of input and of weight, 2*b*i*o each
    assert count_flops(step) == 6 * b * i * o


def test_attention_flops_are_counted_on_cpu():
    b, h, s, d = 2, 3, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    fwd = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert fwd == 2 * (2 * b * h * s * s * d)  # QK^T and AV, as torch counts (causal counted in full)
    both = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both > fwd * 2


def test_peak_table_lookup():
    assert peak_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert peak_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert peak_key("NVIDIA H200") == "H200"
    assert peak_key("NVIDIA GeForce GTX 1080") is None
    assert resolve_peak("cpu", "fp32", declared=1.5) == {"tflops": 1.5, "source": "declared"}
    assert resolve_peak("cpu", "fp32")["tflops"] is None
    measured = resolve_peak("cpu", "fp32", measure=True)
    assert measured["tflops"] > 0 and measured["source"].startswith("measured")


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_bench_train_debug_preset(stage):
    r = bench_train(TrainBenchConfig(stage=stage, preset="debug", batch_size=2, steps=3, warmup=1, device="cpu",
                                     peak_tflops=0.1))
    frames = 2 * r["clip_len"]
    assert r["step_s"]["n"] == 3 and r["step_s"]["median"] > 0
    assert r["frames_per_s"]["median"] == pytest.approx(frames / r["step_s"]["median"])
    assert r["tokens_per_s"]["median"] == pytest.approx(frames * r["tokens_per_frame"] / r["step_s"]["median"])
    # the counted FLOPs at least cover every weight once forward and twice backward per token
    assert r["flops_per_step"] >= 6 * r["parameters"] * frames * r["tokens_per_frame"] * 0.3
    assert r["tflops"] == pytest.approx(r["flops_per_step"] / r["step_s"]["median"] / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops"] / 0.1)
    assert r["precision"] == "fp32" and r["memory"]["peak_rss_gb"] > 0


def test_bench_generate_debug_world():
    r = bench_generate(GenerateBenchConfig(world="debug", batch_sizes=[1, 3], frames=3, warmup=1, repeats=2,
                                           device="cpu"))
    assert [e["batch"] for e in r["results"]] == [1, 3]
    for e in r["results"]:
        assert e["step_s"]["n"] == 6
        assert e["fps_total"] == pytest.approx(e["batch"] / e["step_s"]["median"])
        assert e["fps_per_session"] == pytest.approx(1 / e["step_s"]["median"])
    assert r["window"] == 6 and r["num_actions"] == 4


@pytest.mark.slow
def test_bench_cli_writes_json(tmp_path, debug_world):
    from driftless.cli import main

    out = tmp_path / "train.json"
    assert main(["bench", "train", "--stage", "lam", "--preset", "debug", "--batch-size", "2", "--steps", "2",
                 "--warmup", "1", "--device", "cpu", "--peak-tflops", "0.2", "--json", str(out)]) == 0
    r = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert r["bench"] == "train" and r["results"][0]["stage"] == "lam" and r["results"][0]["mfu"] > 0
    assert r["info"]["device"] == "cpu" and "commit" in r["info"]["git"]
    out = tmp_path / "gen.json"
    assert main(["bench", "generate", str(debug_world), "--batch-sizes", "1,2", "--frames", "2", "--warmup", "1",
                 "--repeats", "2", "--device", "cpu", "--steps", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["bench"] == "generate" and r["sampling"]["steps"] == 2 and len(r["results"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "train", "--stage", "nope"])
