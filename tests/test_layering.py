"""The layering rules of docs/architecture.md, checked on the source.

Every module under src/driftless is parsed with `ast`; imports are collected at any depth (a
function-local import counts as much as one at the top). Each rule is a function from the
parsed modules to a list of violations, so that `test_rules_catch_a_violation` can show that
every rule fails on a module that breaks it (a rule that cannot fail checks nothing).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "driftless"

SHOWCASES = ("plan", "forecast", "image")
LOWER = ("models", "nn", "diffusion", "data")  # know nothing of the layers above them
UPPER = ("eval", "train", "world", "serve", "cli")
WEB = ("fastapi", "starlette", "uvicorn")
FRAME_MODEL_REGISTRY = re.compile(r"^models/(dynamics|frames|frame_\w+)\.py$")  # FRAME_MODELS and its classes


@dataclass(frozen=True)
class Module:
    rel: str  # path below src/driftless, e.g. "models/common.py"
    source: str

    @property
    def name(self) -> str:
        parts = ["driftless", *Path(self.rel).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    @property
    def package(self) -> str:
        """The first package below driftless ("models"), or the module ("runtime", "__main__")."""
        return Path(self.rel).with_suffix("").parts[0]

    def imports(self) -> list[tuple[str, int]]:
        """(imported name, line) of every import statement, function-local ones included;
        `from a.b import c` gives "a.b.c" (a module or a name in it), relative imports resolved."""
        out = []
        for node in ast.walk(ast.parse(self.source, self.rel)):
            if isinstance(node, ast.Import):
                out += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = self.name.split(".") if self.rel.endswith("__init__.py") else self.name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                out += [(base if a.name == "*" else f"{base}.{a.name}", node.lineno) for a in node.names]
        return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def package_modules() -> list[Module]:
    return [Module(p.relative_to(SRC).as_posix(), p.read_text()) for p in sorted(SRC.rglob("*.py"))]


# ---- the rules -------------------------------------------------------------------------------------
# a comparison of a frame-model name with a string: frame_model == "mar", .get("frame_model") in ("mar", ...),
# "maskgit" != cfg.frame_model
SWITCH = re.compile(r"""frame_model["')\]]*\s*(?:==|!=|\bnot\s+in\b|\bin\b)\s*[(\[{]?\s*["']"""
                    r"""|["']\s*(?:==|!=)\s*[\w.\[\]()"']*frame_model""")


def frame_model_switches(mods: list[Module]) -> list[str]:
    """(a) No string switch on the frame model outside its registry: ask the FRAME_MODELS class."""
    return [f"{m.rel}:{i}: {line.strip()}" for m in mods if not FRAME_MODEL_REGISTRY.match(m.rel)
            for i, line in enumerate(m.source.splitlines(), 1) if SWITCH.search(line)]


OPTIMIZER = re.compile(r"^(\w+_)?(opt|optim|optimizer|optimiser)(_\w+)?$", re.IGNORECASE)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def optimizer_steps(mods: list[Module]) -> list[str]:
    """(b) Exactly one optimizer step in the package, the Trainer's (train/trainer.py): a call of
    `step` on an optimizer-named object (opt, optimizer, self.optimizer, ...) or with one as its
    argument (a grad scaler's step)."""
    calls = []
    for m in mods:
        for node in ast.walk(ast.parse(m.source, m.rel)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                    and any(OPTIMIZER.match(_name(n)) for n in (node.func.value, *node.args))):
                calls.append(f"{m.rel}:{node.lineno}")
    if len(calls) == 1 and calls[0].startswith("train/trainer.py:"):
        return []
    return [f"expected exactly one optimizer step, in train/trainer.py; found {calls}"]


def _imports_of(mods: list[Module], which, forbidden) -> list[str]:
    return [f"{m.rel}:{line} imports {name}" for m in mods if which(m) for name, line in m.imports()
            if forbidden(m, name)]


def lower_layers_import_upper(mods: list[Module]) -> list[str]:
    """(c) models, nn, diffusion and data import nothing of eval, train, world, serve or cli."""
    return _imports_of(mods, lambda m: m.package in LOWER,
                       lambda m, name: any(within(name, f"driftless.{up}") for up in UPPER))


def cli_imports_outside_cli(mods: list[Module]) -> list[str]:
    """(d) Only cli/ (and __main__.py) imports driftless.cli."""
    return _imports_of(mods, lambda m: m.package not in ("cli", "__main__"),
                       lambda m, name: within(name, "driftless.cli"))


def runtime_imports_package(mods: list[Module]) -> list[str]:
    """(e) runtime is the bottom: of the package it imports the version only."""
    return _imports_of(mods, lambda m: m.rel == "runtime.py",
                       lambda m, name: within(name, "driftless") and name != "driftless.__version__")


def showcase_imports_showcase(mods: list[Module]) -> list[str]:
    """(f) A showcase (plan, forecast, image) imports nothing of another showcase."""
    return _imports_of(mods, lambda m: m.package in SHOWCASES,
                       lambda m, name: any(within(name, f"driftless.{s}") for s in SHOWCASES if s != m.package))


def web_framework_outside_serve(mods: list[Module]) -> list[str]:
    """(g) Nothing outside serve/ and cli/ imports a web framework."""
    return _imports_of(mods, lambda m: m.package not in ("serve", "cli"),
                       lambda m, name: name.split(".")[0] in WEB)


def core_imports_showcase(mods: list[Module]) -> list[str]:
    """(h) The core imports no showcase: train/specs.py and models/registry.py only name their
    modules (STAGE_MODULES, KINDS), imported when a table is consulted; cli/ registers their verbs."""
    return _imports_of(mods, lambda m: m.package not in (*SHOWCASES, "cli", "__main__"),
                       lambda m, name: any(within(name, f"driftless.{s}") for s in SHOWCASES))


def pipeline_imported_outside_cli(mods: list[Module]) -> list[str]:
    """(i) train/world_run.py (`driftless train world`) builds and evaluates worlds, so it sits above
    world and eval: only cli/ imports it."""
    return _imports_of(mods, lambda m: m.package not in ("cli", "__main__"),
                       lambda m, name: within(name, "driftless.train.world_run"))


RULES = [frame_model_switches, optimizer_steps, lower_layers_import_upper, cli_imports_outside_cli,
         runtime_imports_package, showcase_imports_showcase, web_framework_outside_serve, core_imports_showcase,
         pipeline_imported_outside_cli]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_layering(rule):
    mods = package_modules()
    assert len(mods) > 50 and any(m.rel == "train/trainer.py" for m in mods)
    assert rule(mods) == [], rule.__doc__


# ---- every rule can fail ----------------------------------------------------------------------------
BREAKS = {
    frame_model_switches: ("train/bad.py", 'def f(out):\n    return out.get("frame_model") == "maskgit"\n'),
    optimizer_steps: ("eval/bad.py", "class B:\n    def run(self):\n        self.optimizer.step()\n"),
    lower_layers_import_upper: ("models/bad.py", "def f():\n    from driftless.eval.metrics import psnr\n"),
    cli_imports_outside_cli: ("image/bad.py", "def f():\n    from driftless.cli import common\n"),
    runtime_imports_package: ("runtime.py", "def f():\n    from driftless import checkpoint\n"),
    showcase_imports_showcase: ("plan/bad.py", "def f():\n    from .. import image\n"),
    web_framework_outside_serve: ("world/bad.py", "def f():\n    import fastapi.responses\n"),
    core_imports_showcase: ("train/bad.py", "def f():\n    import driftless.forecast.model\n"),
    pipeline_imported_outside_cli: ("world/bad.py", "def f():\n    from driftless.train.world_run import train_world\n"),
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_rules_catch_a_violation(rule):
    rel, source = BREAKS[rule]
    mods = [m for m in package_modules() if m.rel != rel] + [Module(rel, source)]
    found = rule(mods)
    assert found and any(rel in v for v in found), (rule.__name__, found)


def test_import_collection_sees_local_and_relative_imports():
    m = Module("image/x.py", "import a.b\ndef f():\n    from .model import ImageMAR\n    from . import data\n"
                             "    from ..plan import stage\n")
    assert m.imports() == [("a.b", 1), ("driftless.image.model.ImageMAR", 3), ("driftless.image.data", 4),
                           ("driftless.plan.stage", 5)]
    assert Module("image/__init__.py", "from .cli import register\n").imports() == [("driftless.image.cli.register", 1)]
    assert optimizer_steps([Module("train/trainer.py", "optimizer.step()\nscheduler.step()\nenv.step(a)\n")]) == []
    assert optimizer_steps([Module("train/trainer.py", "scaler.step(opt)\n"),
                            Module("train/trainer2.py", "opt_g.step()\n")])
