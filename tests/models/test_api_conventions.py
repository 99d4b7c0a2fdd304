"""Conventions of the library as a library: worker counts from the CPUs the process may use, the package's
version and ``dir()``, any ``nn.Module`` as a backbone, an import graph without cycles, no function over 60 lines.
"""

from __future__ import annotations

import ast
import importlib
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import barlowtwins
from barlowtwins import BarlowTwins, BarlowTwinsError, BarlowTwinsLoss, custom_backbone
from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.data import resolve_workers
from barlowtwins.methods import build_method
from barlowtwins.methods.simclr import SimCLR
from barlowtwins.models.backbones import as_backbone, output_width
from barlowtwins.runtime import usable_cpus

SRC = Path(barlowtwins.__file__).resolve().parent.parent  # the src/ folder
MAX_FUNCTION_LINES = 60


# -- worker counts ---------------------------------------------------------------------------------------------


def test_worker_count_follows_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)  # taskset -c 2,5,7
    assert usable_cpus() == 3 and resolve_workers(-1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert usable_cpus() == 32 and resolve_workers(-1) == 8  # still at most 8 workers
    assert resolve_workers(0) == 0 and resolve_workers(5) == 5  # an explicit count is kept


def test_worker_count_without_an_affinity_call_uses_the_core_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6 and resolve_workers(-1) == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert usable_cpus() == 1


def test_cpu_count_is_read_in_one_place():
    """Every pool size goes through ``runtime.usable_cpus``; only runtime.py reads ``os.cpu_count`` (its fallback
    and the machine's description in meta.json)."""
    readers = {
        p.relative_to(SRC).as_posix() for p in (SRC / "barlowtwins").rglob("*.py") if "cpu_count" in p.read_text()
    }
    assert readers == {"barlowtwins/runtime.py"}


# -- the package's surface -------------------------------------------------------------------------------------


def test_version_is_the_installed_distribution_version():
    assert barlowtwins.__version__ == metadata.version("barlowtwins")


def test_dir_lists_every_lazily_exported_name_and_each_imports():
    names = dir(barlowtwins)
    assert "__version__" in names and barlowtwins.__all__ == sorted(barlowtwins.__all__)
    for name in barlowtwins.__all__:
        assert name in names, name
        value = getattr(barlowtwins, name)
        home = importlib.import_module(barlowtwins._EXPORTS[name])
        assert value is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        barlowtwins.not_a_name  # noqa: B018


# -- any nn.Module as a backbone -------------------------------------------------------------------------------


def test_a_torchvision_resnet_is_a_backbone_without_its_classifier():
    reference = torchvision.models.resnet18()
    net = torchvision.models.resnet18(num_classes=7)
    model = BarlowTwins(net, "32-16")
    assert model.feature_dim == reference.fc.in_features == 512  # the pooled features, not the 7 logits
    assert model.backbone is net and isinstance(net.fc, nn.Identity) and net.training  # train mode restored
    assert model.projector[0].in_features == 512 and model.projector[-1].out_features == 16
    assert isinstance(model.loss, BarlowTwinsLoss) and model.loss.lambd == LossConfig.lambd  # eq. 1's default
    x = torch.randn(4, 3, 32, 32)
    assert net(x).shape == (4, 512)
    terms = model(x, x.flip(-1))
    assert torch.isfinite(terms["loss"]) and terms["loss"] == terms["invariance"] + terms["redundancy"]


def test_output_width_restores_every_submodule_mode():
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.train()
    net[1].eval()  # e.g. frozen batch-norm statistics
    running_mean = net[1].running_mean.clone()
    assert output_width(net, 32) == 6
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert torch.equal(net[1].running_mean, running_mean)  # the dry forward ran in eval mode


def test_a_plain_module_is_measured_at_the_configured_image_size():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))  # only 16 px images fit
    method = build_method("barlow_twins", net, ModelConfig(projector="8-8"), LossConfig(), image_size=16)
    assert method.feature_dim == 10 and method.backbone is net
    assert SimCLR(custom_backbone(net, 10), nn.Linear(10, 4)).feature_dim == 10


def test_a_backbone_that_does_not_return_features_is_one_line_naming_custom_backbone():
    with pytest.raises(BarlowTwinsError) as error:
        BarlowTwins(nn.Conv2d(3, 4, 3), "8-8")  # (N, 4, H-2, W-2): no pooling
    message = str(error.value)
    assert "\n" not in message and "(1, 4, 222, 222)" in message and "custom_backbone(" in message
    with pytest.raises(BarlowTwinsError) as error:
        BarlowTwins(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)), "8-8")  # fails on 224 px
    message = str(error.value)
    assert "\n" not in message and "RuntimeError" in message and "custom_backbone(module, dim)" in message
    with pytest.raises(BarlowTwinsError, match="must be an nn.Module or a Backbone, not tuple"):
        as_backbone((nn.Identity(), 3))


def test_a_timm_model_is_a_backbone_without_its_head():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    backbone = as_backbone(net, 32)
    assert backbone.dim == net.num_features == 512 and net(torch.randn(2, 3, 32, 32)).shape == (2, 512)


# -- import graph ----------------------------------------------------------------------------------------------


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` of ``package`` under ``src``."""
    files = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its file (also inside functions), relative imports
    resolved; ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {module for module in found if module in known and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, grey/black marking)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    files = module_files(src, package)
    return {name: imported_modules(name, path, files) for name, path in files.items()}


def test_the_package_imports_one_way():
    graph = import_graph(SRC, "barlowtwins")
    assert graph["barlowtwins.models.backbones"] >= {"barlowtwins.models.base", "barlowtwins.models.timm_backbones"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_relative_import_inside_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n    from . import c\n")
    (package / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.a", "pkg.sub.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (package / "sub" / "b.py").write_text("from . import c\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


# -- function length -------------------------------------------------------------------------------------------


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (N lines)`` for every function or method of more than ``limit`` lines, docstring included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    too_long = long_functions(SRC / "barlowtwins")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)


def test_the_length_check_counts_docstrings_and_methods(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    (tmp_path / "m.py").write_text(
        f'def ok():\n    """doc"""\n{body}\n\nclass C:\n    def long(self):\n'
        f'        """doc"""\n        y = 0\n{body.replace("    ", "        ")}\n'
    )
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:63 long (61 lines)"]
