"""Stage specs, the model-kind and stage tables, and flags made from config dataclasses."""

import argparse
import dataclasses
import textwrap

import pytest
import torch

from driftless.config import add_dataclass_flags, dataclass_from_args
from driftless.config import option
from driftless.models import registry
from driftless.train.specs import STAGES, StageArgs, StageSpec, all_stages, get_stage, register_stage
from driftless.train.trainer import TrainConfig

from conftest import make_store


@dataclasses.dataclass
class _Opts:
    name: str = option(help="required: no default")
    size: int = option(3, help="a size (default %(default)s)")
    rate: float | None = option(None, help="optional")
    mode: str = option("a", choices=("a", "b"), help="one of a, b")
    fast: bool = option(False, help="a switch")
    path: str | None = option(None, metavar="DIR", help="somewhere")
    table: dict = dataclasses.field(default_factory=dict)


def test_dataclass_flags_round_trip():
    p = argparse.ArgumentParser()
    add_dataclass_flags(p, _Opts, exclude=("table",), help={"rate": "replaced help"})
    flags = {a.option_strings[0]: a for a in p._actions if a.option_strings and a.dest != "help"}
    assert sorted(flags) == ["--fast", "--mode", "--name", "--path", "--rate", "--size"]
    assert flags["--name"].required and flags["--mode"].choices == ["a", "b"] and flags["--path"].metavar == "DIR"
    assert flags["--rate"].help == "replaced help" and "%(default)s" in flags["--size"].help
    args = p.parse_args(["--name", "x", "--rate", "0.5", "--fast"])
    assert dataclass_from_args(_Opts, args, size=7) == _Opts(name="x", size=7, rate=0.5, fast=True)
    assert dataclass_from_args(_Opts, p.parse_args(["--name", "y"])) == _Opts(name="y")
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "x", "--mode", "c"])
    with pytest.raises(TypeError, match="table"):
        add_dataclass_flags(argparse.ArgumentParser(), _Opts)


def test_train_flags_are_the_train_config():
    from driftless.cli import build_parser

    args = build_parser().parse_args(["train", "dynamics", "--data", "d", "--out", "o", "--lr", "0.01",
                                      "--teacher-forcing", "--actions", "true"])
    assert dataclass_from_args(TrainConfig, args) == TrainConfig(lr=0.01)
    assert args.teacher_forcing and args.actions == "true" and args.frame_model is None


def test_stage_table():
    assert list(all_stages())[:3] == ["tokenizer", "lam", "dynamics"]
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        get_stage("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_stage(dataclasses.replace(get_stage("lam"), help="another"))
    tok, dyn = get_stage("tokenizer"), get_stage("dynamics")
    cfg = registry.preset("dynamics", "debug")
    assert dyn.with_clip_len(cfg)[1] == cfg.clip_len
    assert dyn.with_clip_len(cfg, 3)[0].clip_len == 3
    assert tok.with_clip_len(registry.preset("tokenizer", "debug"))[1] == 8
    # options that stand for a --set are recorded as overrides
    a = dyn.resolve(StageArgs(kind="dynamics", data="d", out="o", overrides={"backbone.depth": 2},
                              options=dyn.options(teacher_forcing=True)))
    assert a.overrides == {"backbone.depth": 2, "teacher_forcing": True} and a.options.actions == "lam"
    with pytest.raises(ValueError, match="options"):
        tok.resolve(StageArgs(kind="tokenizer", data="d", out="o", options=dyn.options()))


def test_random_world_dynamics_fits_its_tokenizer_and_lam():
    from driftless.eval.bench import random_world

    w = random_world("debug")
    d, t = w.dynamics.cfg, w.tokenizer.cfg
    assert (d.latent_dim, tuple(d.grid), d.num_actions) == (t.latent_dim, tuple(t.grid), w.lam.cfg.num_actions)


def test_tokenizer_validation_reports_vq_usage():
    from driftless.config import override

    tok = registry.build("tokenizer", override(registry.preset("tokenizer", "debug"),
                                               {"bottleneck": "vq", "codebook_size": 16})).eval()
    frames = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    metrics, image = get_stage("tokenizer").validation(tok, {"frames": frames})
    assert set(metrics) == {"psnr", "ssim", "vq_perplexity", "vq_usage"}
    assert image.shape == (2 * 2 * 64, 3 * 64, 3) and image.dtype == torch.uint8


TOY = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from torch import nn

    @dataclass
    class ToyConfig:
        resolution: tuple = (64, 64)
        patch: int = 8

    PRESETS = {"debug": ToyConfig()}

    class Toy(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.w = nn.Parameter(torch.zeros(3))

        def training_loss(self, batch):
            x = batch["frames"].float().mean(dim=(1, 2, 3)) / 255
            loss = ((x - self.w) ** 2).mean()
            return loss, {"mse": loss.detach()}
''')


def test_a_package_registers_its_own_model_kind_and_stage(tmp_path, monkeypatch):
    from driftless.train.stages import run_stage
    from driftless.train.world_stages import pixel_clips

    (tmp_path / "toypkg").mkdir()
    (tmp_path / "toypkg" / "__init__.py").write_text("")
    (tmp_path / "toypkg" / "model.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = make_store(tmp_path / "store", episodes=2, length=6)
    registry.register_kind("toy", registry.ModelKind("toypkg.model", "Toy", "ToyConfig"))

    def validation(model, batch):
        return {"w_norm": float(model.w.norm())}, None

    try:
        register_stage(StageSpec(name="toy", help="a toy stage", data_help="episode store", data=pixel_clips,
                                 clip_len=2, validation=validation))
        train = TrainConfig(steps=2, batch_size=2, warmup=1, log_every=1, val_every=2, save_every=0)
        summary = run_stage(StageArgs(kind="toy", data=str(store.root), val_data=str(store.root),
                                      out=str(tmp_path / "run"), preset="debug", train=train, workers=0,
                                      device="cpu"))
        assert summary["step"] == 2
        model = registry.load_model(tmp_path / "run" / "checkpoint", kind="toy")
        assert type(model).__module__ == "toypkg.model"
        assert '"w_norm"' in (tmp_path / "run" / "metrics.jsonl").read_text()
    finally:
        STAGES.pop("toy", None)
        registry.KINDS.pop("toy", None)


# ---- the showcases' stages ------------------------------------------------------------------------
def test_the_stage_table_knows_the_showcases_without_importing_them_first():
    import subprocess
    import sys

    code = ("import sys; from driftless.train import specs; "
            "before = sorted(m for m in sys.modules if m.split('.')[:2] in (['driftless', 'image'], ['driftless', 'plan'], "
            "['driftless', 'forecast'])); "
            "names = list(specs.all_stages()); print(before, names, sorted(specs.STAGE_MODULES) == "
            "sorted(set(specs.STAGE_MODULES)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("[] ['tokenizer', 'lam', 'dynamics', 'image', 'sequence_df', 'forecaster'] True"), out
    stages = all_stages()
    assert {n: s.verb for n, s in stages.items() if s.verb} == {
        "image": "driftless image train", "sequence_df": "driftless plan train", "forecaster": "driftless forecast train"}
    assert all(n in registry.KINDS for n in stages)  # a stage trains the model kind of its name


def test_driftless_train_offers_only_its_own_stages():
    from driftless.cli import build_parser
    from driftless.train.stages import run_stage

    parser = build_parser()
    for name in ("image", "sequence_df", "forecaster"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", name, "--data", "d", "--out", "o"])
    with pytest.raises(ValueError, match="driftless plan train"):
        run_stage(StageArgs(kind="sequence_df", data="d", out="o"))


def test_showcase_clip_lengths_and_synthetic_batches():
    from driftless.eval.bench import TrainBenchConfig, bench_train

    image, seq, fc = get_stage("image"), get_stage("sequence_df"), get_stage("forecaster")
    icfg = registry.preset("image", "debug")
    assert image.with_clip_len(icfg)[1] == 1 and image.tokens_per_frame(icfg) == icfg.tokens
    scfg = registry.preset("sequence_df", "debug")
    assert seq.with_clip_len(scfg)[1] == scfg.max_tokens and seq.with_clip_len(scfg, 7)[0].max_tokens == 7
    fcfg = registry.preset("forecaster", "debug")
    assert fc.with_clip_len(fcfg)[1] == fcfg.context_length + fcfg.prediction_length and fc.synthetic_batch is None
    with pytest.raises(ValueError, match="one-frame"):
        image.synthetic_batch(icfg, 2, 3, torch.Generator())
    for stage in ("image", "sequence_df"):
        r = bench_train(TrainBenchConfig(stage=stage, preset="debug", batch_size=2, steps=1, warmup=0, device="cpu",
                                         clip_len=4 if stage == "sequence_df" else None))
        assert r["flops_per_step"] > 0 and r["clip_len"] == (4 if stage == "sequence_df" else 1)


def test_showcase_configs_derive_from_their_data(tmp_path):
    import numpy as np

    from driftless import checkpoint
    from driftless.config import to_dict
    from driftless.forecast.data import load_dataset
    from driftless.forecast.stage import ForecastOptions, forecaster_config
    from driftless.image.data import write_image_folder
    from driftless.image.stage import ImageOptions
    from driftless.plan.maze import STEP_FEATURES
    from driftless.plan.stage import SequenceOptions, maze_config

    # image: the tokenizer's latent width and grid, the folder's classes; --order and --set win
    tcfg = registry.preset("tokenizer", "debug")
    checkpoint.save(tmp_path / "tok", "tokenizer", to_dict(tcfg), {})
    imgs = np.zeros((4, 64, 64, 3), np.uint8)
    write_image_folder(tmp_path / "imgs", imgs, np.array([0, 1, 1, 0]), ["b", "a"])
    image = get_stage("image")
    a = image.resolve(StageArgs(kind="image", data=str(tmp_path / "imgs"), out="o", overrides={"depth": 2},
                                options=ImageOptions(tokenizer=str(tmp_path / "tok"), order="raster")))
    assert a.overrides == {"depth": 2, "order": "raster"}
    cfg = image.configure(registry.preset("image", "small"), a)
    assert (tuple(cfg.grid), cfg.latent_dim, cfg.class_names) == (tuple(tcfg.grid), tcfg.latent_dim, ["a", "b"])
    assert (cfg.depth, cfg.order, cfg.diffloss.token_dim) == (2, "raster", tcfg.latent_dim)
    assert image.meta(a)["train_images"] == 4
    with pytest.raises(ValueError, match="ImageOptions"):
        image.configure(registry.preset("image", "small"), StageArgs(kind="image", data="d", out="o"))

    # maze: token width from the frame stack, the window from the episode (DF) or the horizon (Diffuser)
    data = {"maze": "umaze", "actions": np.zeros((500, 2))}
    df = maze_config(registry.preset("sequence_df", "debug"), data, "x.npz", SequenceOptions(frame_stack=5))
    diffuser = maze_config(registry.preset("sequence_df", "debug"), data, "x.npz",
                           SequenceOptions(baseline="diffuser", frame_stack=5), {"width": 64})
    assert df.token_dim == 5 * STEP_FEATURES and df.causal and df.meta["dataset_steps"] == 500
    assert not diffuser.causal and diffuser.noise == "full_sequence" and diffuser.width == 64
    assert diffuser.max_tokens != df.max_tokens and df.meta["baseline"] == "diffusion_forcing"

    # forecaster: the data's series, horizon and season; the context defaults to twice the horizon
    ds = load_dataset("synthetic:dim=3,prediction_length=4")
    cfg = forecaster_config(registry.preset("forecaster", "debug"), ds, ForecastOptions(teacher_forcing=True))
    assert (cfg.target_dim, cfg.prediction_length, cfg.context_length, cfg.teacher_forcing) == (3, 4, 8, True)
    assert cfg.seasons == ((ds.season,) if 1 < ds.season <= ds.train.shape[0] // 2 else ())


def test_init_from_a_dynamics_of_another_codebook_size_keeps_all_but_the_action_rows(tmp_path):
    """A fresh LAM with more codes under a trained dynamics model: every weight comes over except the
    latent actions' embedding rows (they meant the old LAM's codes), and the null action's row is kept;
    any other shape difference is refused."""
    from driftless import checkpoint
    from driftless.config import override, to_dict
    from driftless.train.stages import _init_weights

    torch.manual_seed(0)
    small = registry.build("dynamics", override(registry.preset("dynamics", "debug"), {"num_actions": 4}))
    checkpoint.save(tmp_path / "dyn", "dynamics", to_dict(small.cfg), small.state_dict())
    big = registry.build("dynamics", override(small.cfg, {"num_actions": 6}))
    fresh_rows = big.action_emb.weight[:6].detach().clone()
    _init_weights(big, str(tmp_path / "dyn"), "dynamics")
    for k, v in small.state_dict().items():
        if k != "action_emb.weight":
            torch.testing.assert_close(big.state_dict()[k], v)
    torch.testing.assert_close(big.action_emb.weight[-1], small.action_emb.weight[-1])  # the null action
    torch.testing.assert_close(big.action_emb.weight[:6], fresh_rows)
    wider = registry.build("dynamics", override(small.cfg, {"num_actions": 6, "backbone.dim": 48, "backbone.cond_dim": 48}))
    with pytest.raises(ValueError, match="do not fit"):
        _init_weights(wider, str(tmp_path / "dyn"), "dynamics")


def test_init_from_a_dynamics_with_the_other_action_conditioning(tmp_path):
    """Token -> additive action conditioning: every weight but the token's bias comes over (action rows
    too); additive -> token: the token's bias starts fresh. The null action's row is kept either way."""
    from driftless import checkpoint
    from driftless.config import override, to_dict
    from driftless.train.stages import _init_weights

    torch.manual_seed(0)
    token = registry.build("dynamics", registry.preset("dynamics", "debug"))
    assert token.cfg.action_conditioning == "token"
    checkpoint.save(tmp_path / "tok", "dynamics", to_dict(token.cfg), token.state_dict())
    additive = registry.build("dynamics", override(token.cfg, {"action_conditioning": "additive"}))
    assert "action_token_bias" not in additive.state_dict()
    _init_weights(additive, str(tmp_path / "tok"), "dynamics")
    for k, v in additive.state_dict().items():
        torch.testing.assert_close(v, token.state_dict()[k])
    checkpoint.save(tmp_path / "add", "dynamics", to_dict(additive.cfg), additive.state_dict())
    back = registry.build("dynamics", token.cfg)
    with torch.no_grad():
        back.action_token_bias.fill_(0.5)  # what a fresh model would start from, made visible
    _init_weights(back, str(tmp_path / "add"), "dynamics")
    assert torch.all(back.action_token_bias == 0.5)
    torch.testing.assert_close(back.action_emb.weight, token.action_emb.weight)
