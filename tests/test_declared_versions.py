"""The versions the project declares agree everywhere they are written: pyproject.toml's lower
bounds are the pins .ci/run's lowest-versions job installs (``.ci/version_matrix.py``), and the
adapters' ``TESTED`` ranges hold them."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _matrix() -> object:
    spec = importlib.util.spec_from_file_location("version_matrix", ROOT / ".ci" / "version_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared() -> dict[str, SpecifierSet]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r.specifier for r in map(Requirement, deps)}


def _lower(spec: SpecifierSet) -> Version:
    return Version(next(s.version for s in spec if s.operator == ">="))


def test_lowest_pins_are_pyprojects_lower_bounds() -> None:
    matrix = _matrix()
    pins = [Requirement(p) for p in matrix.MATRIX["lowest"] + matrix.TORCH]  # type: ignore[attr-defined]
    declared = _declared()
    for pin in pins:
        (version,) = [Version(s.version) for s in pin.specifier]
        assert version == _lower(declared[pin.name]), f"{pin} is not the lower bound {declared[pin.name]}"
    assert {p.name for p in pins} >= {"ray", "mlflow", "optuna", "torch", "torchvision"}


def test_adapters_tested_ranges_are_the_declared_ones() -> None:
    from orchestrator import mlflow_adapter
    from orchestrator.ray_tune import adapter as ray_adapter

    declared = _declared()
    for name, tested in (("ray", ray_adapter.TESTED), ("mlflow", mlflow_adapter.TESTED)):
        assert SpecifierSet(tested) == declared[name], f"{name}: TESTED {tested} vs pyproject {declared[name]}"
