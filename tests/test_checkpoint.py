import json

import pytest
import torch

from driftless import checkpoint
from driftless.config import from_dict, override, parse_overrides, to_dict
from driftless.models import registry
from driftless.models.tokenizer import TokenizerConfig


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    cfg = registry.preset("tokenizer", "debug")
    model = registry.build("tokenizer", cfg)
    checkpoint.save(tmp_path / "ck", "tokenizer", to_dict(cfg), model.state_dict(), meta={"step": 3})
    loaded = registry.load_model(tmp_path / "ck")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert checkpoint.read_header(tmp_path / "ck")["meta"]["step"] == 3


def test_truncated_and_missing_checkpoints_give_clear_errors(tmp_path):
    cfg = registry.preset("tokenizer", "debug")
    model = registry.build("tokenizer", cfg)
    d = checkpoint.save(tmp_path / "ck", "tokenizer", to_dict(cfg), model.state_dict(),
                        train_state={"step": 1, "x": torch.ones(3)})
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        registry.load_model(d)
    ts = (d / "train_state.pt").read_bytes()
    (d / "train_state.pt").write_bytes(ts[:40])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.read_train_state(d)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.read_header(tmp_path / "nothing")
    with pytest.raises(checkpoint.CheckpointError, match="expected 'lam'"):
        checkpoint.read_header(d, "lam")
    (d / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.read_header(d)


def test_interrupted_swap_is_recovered_and_old_data_survives(tmp_path, monkeypatch):
    cfg = to_dict(registry.preset("tokenizer", "debug"))
    model = registry.build("tokenizer", registry.preset("tokenizer", "debug"))
    d = checkpoint.save(tmp_path / "ck", "tokenizer", cfg, model.state_dict(), meta={"step": 1})
    import os

    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # after moving the old folder aside, before moving the new one in
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second)
    with pytest.raises(OSError):
        checkpoint.save(d, "tokenizer", cfg, model.state_dict(), meta={"step": 2})
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    # the folder is gone but its .old twin holds the previous complete checkpoint
    assert checkpoint.read_header(d)["meta"]["step"] == 1
    registry.load_model(d)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown field"):
        from_dict(TokenizerConfig, {"patchsize": 3})
    with pytest.raises(ValueError, match="no such field"):
        override(registry.preset("tokenizer", "debug"), {"encoder.width": 3})
    with pytest.raises(ValueError, match="bottleneck"):
        TokenizerConfig(bottleneck="pq")
    with pytest.raises(ValueError, match="no tokenizer preset"):
        registry.preset("tokenizer", "huge")
    cfg = override(registry.preset("tokenizer", "debug"), {"encoder.depth": 3})
    assert cfg.encoder.depth == 3 and json.loads(json.dumps(to_dict(cfg)))["encoder"]["depth"] == 3
    # --set reads values as JSON: `action_source=true` arrives as a boolean, and a text field takes it as text
    dyn = override(registry.preset("dynamics", "debug"), parse_overrides(["action_source=true"]))
    assert dyn.action_source == "true"
    with pytest.raises(ValueError, match="action_source must be one of"):
        override(registry.preset("dynamics", "debug"), parse_overrides(["action_source=false"]))
