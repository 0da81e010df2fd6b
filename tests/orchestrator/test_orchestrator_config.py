"""Sweep-file validation: good files resolve; bad ones exit 2 naming the key, before Ray."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from orchestrator.sweep import apply_set, load_sweep, parse_sweep
from orchestrator.sweep.tracking_uri import sqlite_path
from trainables import ConfigError
from orchestrator.run import main


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    head, _, rest = dotted.partition(".")
    if head == "space":
        out["space"][rest] = value
        return out
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _drop(data: dict[str, Any], key: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.pop(key)
    return out


# (id, how to break the tiny sweep, text the error must contain)
BAD: list[tuple[str, Any, str]] = [
    ("unknown-top-key", lambda s: {**s, "serch": {}}, "did you mean 'search'"),
    ("unknown-nested-key", lambda s: _set(s, "search.num_sample", 3), "search.num_sample"),
    ("wrong-type-int", lambda s: _set(s, "search.num_samples", "eight"), "search.num_samples"),
    ("num-samples-zero", lambda s: _set(s, "search.num_samples", 0), "search.num_samples"),
    ("wrong-type-section", lambda s: {**s, "resources": [1, 2]}, "resources"),
    ("empty-space", lambda s: {**s, "space": {}}, "space"),
    ("only-constants", lambda s: {**s, "space": {"optim.lr": 0.1}}, "space"),
    ("space-not-trial-key", lambda s: _set(s, "space.search.budgt", {"choice": [0.5]}), "space.search.budgt"),
    ("space-below-a-value", lambda s: _set(s, "space.optim.lr.x", {"choice": [0.5]}), "space.optim.lr.x"),
    ("bad-distribution", lambda s: _set(s, "space.optim.lr", {"choise": [0.1]}), "did you mean 'choice'"),
    ("two-distributions", lambda s: _set(s, "space.optim.lr", {"choice": [0.1], "uniform": [0, 1]}), "space.optim.lr"),
    ("uniform-three-values", lambda s: _set(s, "space.optim.lr", {"uniform": [0.1, 0.2, 0.3]}), "space.optim.lr.uniform"),
    ("uniform-low-above-high", lambda s: _set(s, "space.optim.lr", {"uniform": [0.2, 0.1]}), "space.optim.lr.uniform"),
    ("loguniform-zero", lambda s: _set(s, "space.optim.lr", {"loguniform": [0, 0.1]}), "space.optim.lr.loguniform"),
    ("randint-float", lambda s: _set(s, "space.search.epochs", {"randint": [1.5, 4]}), "space.search.epochs.randint[0]"),
    ("choice-empty", lambda s: _set(s, "space.search.budget", {"choice": []}), "space.search.budget.choice"),
    ("sampled-value-invalid", lambda s: _set(s, "space.search.budget", {"choice": [0, 0.5]}), "space.search.budget"),
    ("sampled-range-invalid", lambda s: _set(s, "space.optim.lr", {"uniform": [0.1, 50.0]}), "space.optim.lr"),
    ("grid-with-optuna", lambda s: _set(s, "space.search.budget", {"grid": [0.2, 0.5]}), "space.search.budget"),
    ("objective-unknown-metric", lambda s: _set(s, "search.objectives", [{"metric": "val_accuracy", "mode": "max"}]),
     "search.objectives[0].metric"),
    ("objective-bad-mode", lambda s: _set(s, "search.objectives", [{"metric": "val_acc", "mode": "maximize"}]),
     "search.objectives[0].mode"),
    ("objectives-empty", lambda s: _set(s, "search.objectives", []), "search.objectives"),
    ("objective-twice", lambda s: _set(s, "search.objectives", [{"metric": "val_acc", "mode": "max"}] * 2),
     "search.objectives[1].metric"),
    ("sampler-typo", lambda s: _set(s, "search.sampler", "nsga2"), "search.sampler"),
    ("negative-cpus", lambda s: _set(s, "resources.cpus", -1), "resources.cpus"),
    ("more-cpus-than-local-ray", lambda s: _set(s, "resources.cpus", 64), "resources.cpus"),
    ("gpus-on-cpu-machine", lambda s: _set(s, "resources.gpus", 4), "resources.gpus"),
    ("ray-num-gpus-too-many", lambda s: _set(s, "ray.num_gpus", 64), "ray.num_gpus"),
    ("address-with-num-cpus", lambda s: _set(s, "ray.address", "auto"), "ray.num_cpus"),
    ("asha-final-only-metric", lambda s: _set(s, "scheduler", {"type": "asha", "metric": "latency_fused_ms", "mode": "min"}),
     "scheduler.metric"),
    ("asha-reduction-factor", lambda s: _set(s, "scheduler", {"type": "asha", "reduction_factor": 1}), "scheduler.reduction_factor"),
    ("stop-unknown", lambda s: _set(s, "stop", {"val_accc": 0.9}), "stop.val_accc"),
    ("max-failures", lambda s: _set(s, "failure.max_failures", -5), "failure.max_failures"),
    ("tracking-uri-plain-path", lambda s: _set(s, "mlflow.tracking_uri", "./mlruns"), "mlflow.tracking_uri"),
    ("register-typo", lambda s: _set(s, "mlflow.register", "best"), "mlflow.register"),
    ("name-with-slash", lambda s: {**s, "name": "a/b"}, "name"),
    ("storage-uri-query", lambda s: {**s, "storage_path": "s3://b/p?endpoint_override=h:9000"}, "storage_path"),
    ("trial-not-mapping", lambda s: {**s, "trial": 5}, "trial"),
    ("trial-unknown-key", lambda s: _set(s, "trial.optim.lrr", 0.1), "trial.optim.lrr"),
    ("trial-bad-model", lambda s: _set(s, "trial.model.name", "resnet19"), "trial.model.name"),
    ("trial-workers-conflict", lambda s: _set(s, "trial.runtime.workers", 2), "trial.runtime.workers"),
    # semantic checks: decided from the file alone (the model built on the meta device), before Ray
    ("budget-above-candidates", lambda s: _set(s, "space.search.budget", {"choice": [0.5, 1000]}),
     "space.search.budget: value 1000 is invalid: trial.search.budget: 1000 branches requested but the model has only 30"),
    ("constant-budget-above-candidates", lambda s: _set(s, "space.search.budget", 31),
     "trial.search.budget: 31 branches requested but the model has only 30 candidates"),
    ("ratio-budget-keeps-nothing", lambda s: _set(s, "space.search.budget", {"uniform": [0.01, 0.5]}),
     "space.search.budget: value 0.01 is invalid"),
    ("phases-longer-than-sampled-epochs", lambda s: _set(_set(_set(s, "trial.search.epochs", 6), "trial.search.random_epochs", 2),
                                                         "space.search.epochs", {"randint": [2, 6]}),
     "space.search.epochs: value 2 is invalid: trial.search.search_epochs: random_epochs + search_epochs (2 + 1) exceeds epochs (2)"),
    ("option-the-host-lacks", lambda s: _set(s, "space.model.options.widht", {"choice": [2]}),
     "space.model.options.widht: value 2 is invalid: trial.model.options: unknown option 'widht'"),
    ("budget-only-too-big-for-one-host", lambda s: _set(_set(_set(s, "trial.model.name", "resnet_tiny"), "space.model.name",
                                                             {"choice": ["resnet_tiny", "repvgg_tiny"]}),
                                                        "space.search.budget", {"choice": [0.5, 40]}),
     "value 40 together with {'model.name': 'repvgg_tiny'} is invalid: trial.search.budget: 40 branches"),
    ("layer-floor-above-sampled-budget", lambda s: _set(_set(s, "trial.search.layer_floor", 1), "space.search.budget",
                                                        {"choice": [0.5, 4]}),
     "space.search.budget: value 4 is invalid: trial.search.layer_floor: a floor of 1 per layer keeps 5 branches"),
    ("unknown-reparam", lambda s: _set(s, "trial.model.reparam", "onilne"), "trial.model.reparam"),
]

BAD_TEXT: list[tuple[str, str, str]] = [
    ("not-yaml", "search: [unclosed\nname: x\n", "not valid YAML"),
    ("not-a-mapping", "- just\n- a list\n", "must hold a mapping"),
    ("tab-indented", "search:\n\tnum_samples: 3\n", "not valid YAML"),
]


def _check_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, f"expected one paragraph, got:\n{err}"
    assert not ray.is_initialized()


@pytest.mark.parametrize(("case", "breaker", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_exits_2_naming_the_key(case: str, breaker: Any, needle: str, tmp_path: Path,
                                          write_sweep: Any, kit: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(breaker(kit.tiny_sweep(tmp_path)))
    code = main([str(path)])
    _check_error(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("case", ["budget-above-candidates", "budget-only-too-big-for-one-host"])
def test_semantic_errors_in_dry_run_too(case: str, tmp_path: Path, write_sweep: Any, kit: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    breaker, needle = next((b, n) for c, b, n in BAD if c == case)
    assert main([str(write_sweep(breaker(kit.tiny_sweep(tmp_path)))), "--dry-run"]) == 2
    _check_error(2, capsys.readouterr().err, needle)
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(("case", "text", "needle"), BAD_TEXT, ids=[b[0] for b in BAD_TEXT])
def test_bad_yaml_text(case: str, text: str, needle: str, write_sweep: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(write_sweep(text))])
    _check_error(code, capsys.readouterr().err, needle)


def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for target in (tmp_path / "missing.yaml", tmp_path):  # a missing file, a directory
        code = main([str(target)])
        _check_error(code, capsys.readouterr().err, "cannot read sweep file")


def test_bad_set_override(tmp_path: Path, write_sweep: Any, kit: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(kit.tiny_sweep(tmp_path))
    _check_error(main([str(path), "--set", "search.num_samples"]), capsys.readouterr().err, "--set")
    _check_error(main([str(path), "--set", "search.num_samples=-1"]), capsys.readouterr().err, "search.num_samples")


def test_bad_sweep_subprocess_has_no_traceback(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    bad = kit.tiny_sweep(tmp_path)
    bad["space"]["search.budget"] = {"choice": [0, 0.5]}
    for path in (write_sweep(bad), write_sweep("a: [b\n", "broken.yaml")):
        proc = kit.run_cli([str(path)], cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr
        assert not (tmp_path / "ray_results").exists()


def test_resolved_defaults_and_overrides(tmp_path: Path, write_sweep: Any, kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = kit.tiny_sweep(tmp_path)
    data.pop("name")
    data["storage_path"] = "./rel_results"
    data["mlflow"]["tracking_uri"] = "sqlite:///rel.db"
    path = write_sweep(data, "my-sweep.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_sweep(path, ["search.num_samples=5", "space.optim.lr={choice: [0.1, 0.2]}",
                            "trial.search.epochs=3", "scheduler=asha"], env={})
    assert cfg.name == "my-sweep"
    assert cfg.storage_path == str(tmp_path / "rel_results")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'rel.db'}"
    assert cfg.search.num_samples == 5
    assert cfg.trial["search"]["epochs"] == 3
    assert {p.key: p.kind for p in cfg.space} == {"search.budget": "choice", "optim.lr": "choice"}
    assert (cfg.scheduler.type, cfg.scheduler.metric, cfg.scheduler.mode) == ("asha", "val_acc", "max")
    env_cfg = load_sweep(path, [], env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"})
    assert env_cfg.mlflow.tracking_uri == "http://127.0.0.1:5999"
    both = load_sweep(path, ["mlflow.tracking_uri=sqlite:////x/y.db"], env={"MLFLOW_TRACKING_URI": "http://h:1"})
    assert both.mlflow.tracking_uri == "sqlite:////x/y.db"  # --set beats the environment
    query = load_sweep(path, ["mlflow.tracking_uri=sqlite:///rel.db?timeout=30"], env={})
    assert query.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'rel.db'}?timeout=30"


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:////abs/m.db?timeout=30") == "/abs/m.db"
    assert sqlite_path("sqlite:///rel.db") == "rel.db" and sqlite_path("sqlite:///:memory:") == ":memory:"
    assert sqlite_path("http://h:5000") is None and sqlite_path("postgresql://h/db") is None


def test_space_constants_go_into_the_base_trial(tmp_path: Path, kit: Any) -> None:
    raw = kit.tiny_sweep(tmp_path)
    raw["space"]["optim.momentum"] = 0.8
    cfg = parse_sweep(raw)
    assert cfg.trial["optim"]["momentum"] == 0.8 and cfg.base.optim.momentum == 0.8
    assert [p.key for p in cfg.space if p.sampled] == ["search.budget", "optim.lr"]


@pytest.mark.parametrize(("runtime", "cpus", "threads"), [({}, 3, 3), ({"num_threads": None}, 0.5, 1),
                                                         ({"num_threads": 2}, 4, 2)])
def test_unset_threads_are_the_trials_cpus(tmp_path: Path, kit: Any, runtime: dict[str, Any], cpus: float,
                                           threads: int) -> None:
    """The config a trial runs is known on the driver (its MLflow params are the same from the hook or sync)."""
    raw = kit.tiny_sweep(tmp_path, resources={"cpus": cpus}, ray={"num_cpus": 4})
    raw["trial"]["runtime"] = {"device": "cpu", **runtime}
    cfg = parse_sweep(raw)
    assert cfg.base.runtime.num_threads == threads and cfg.trial_config({"search.budget": 0.5}).runtime.num_threads == threads
    assert cfg.trial["runtime"].get("num_threads") == runtime.get("num_threads")  # decided in one place: with_threads


def test_apply_set_creates_sections() -> None:
    out = apply_set({}, ["mlflow.experiment=x", "space.search.budget={choice: [0.5]}", "stop.time_total_s=60"])
    assert out == {"mlflow": {"experiment": "x"}, "space": {"search.budget": {"choice": [0.5]}},
                   "stop": {"time_total_s": 60}}


def test_dry_run_prints_samples_without_ray(tmp_path: Path, write_sweep: Any, kit: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(kit.tiny_sweep(tmp_path))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\n# 3 trials; the first 3 " in out
    resolved = yaml.safe_load(out.split("\n# 3 trials; the first 3")[0])
    assert resolved["name"] == "tiny" and resolved["search"]["num_samples"] == 3
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 3 and "search.budget" in out
    assert not ray.is_initialized() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_validate(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config loads, runs the number of trials its header says, and the resolved
    sweep that ``--dry-run`` prints reads back as the same sweep."""
    from orchestrator.sweep import trial_count

    # GPU configs validate on a CPU machine only when pointed at a cluster or CPU
    overrides = []
    raw = yaml.safe_load(config.read_text())
    if raw.get("ray", {}).get("address") is None and raw.get("resources", {}).get("gpus", 0):
        overrides = ["resources.gpus=0", "ray.num_gpus=null"]
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    cfg = load_sweep(config, overrides, env={})
    claimed = re.search(r"^#.*?(\d+) trials", config.read_text(), re.M)
    if claimed:
        assert trial_count(cfg.space, cfg.search.algorithm, cfg.search.num_samples, cfg.search.paired) == int(claimed.group(1))
    assert parse_sweep(cfg.to_dict(), source=cfg.source) == cfg


@pytest.mark.parametrize(("search", "space", "scheduler", "max_t"), [
    ({"random_epochs": 1, "search_epochs": 1}, {}, {}, 150),  # epochs left to the default
    ({"epochs": 2, "random_epochs": 1, "search_epochs": 1}, {"search.epochs": {"choice": [3, 7]}}, {}, 7),
    ({"epochs": 2, "random_epochs": 1, "search_epochs": 1},
     {"search": {"choice": [{"method": "dbb", "epochs": 9}, {"method": "odbb"}]}}, {}, 9),  # a group sets it
    ({"epochs": 2, "random_epochs": 1, "search_epochs": 1}, {"search.epochs": {"randint": [3, 6]}}, {}, 5),
    ({"epochs": 2, "random_epochs": 1, "search_epochs": 1}, {}, {"max_t": 4}, 4),  # the file's own max_t wins
])
def test_asha_max_t_is_the_longest_trial_the_space_can_sample(tmp_path: Path, kit: Any, search: dict[str, Any],
                                                             space: dict[str, Any], scheduler: dict[str, Any],
                                                             max_t: int) -> None:
    """ASHA's ``max_t`` counts the trial's real epochs (one report each), from the validated
    trials, not from the raw ``trial:`` mapping (which made it 100 for a default or sampled epochs)."""
    from orchestrator.ray_tune.tuner import make_scheduler

    raw = kit.tiny_sweep(tmp_path, scheduler={"type": "asha", **scheduler})
    raw["trial"]["search"] = search
    raw["space"].update(space)
    cfg = parse_sweep(raw)
    assert cfg.scheduler.max_t == max_t
    assert (cfg.scheduler.metric, cfg.scheduler.mode) == ("val_acc", "max")  # the first objective's
    assert make_scheduler(cfg)._max_t == max_t  # what Ray's ASHA is given


def test_extends_merges_a_base_sweep_file(tmp_path: Path, write_sweep: Any, kit: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from trainables.config.sweepfile import load_trial_section

    base = kit.tiny_sweep(tmp_path, name="base")
    base["space"] = {"search.budget": {"choice": [0.2, 0.5]}, "optim.lr": {"loguniform": [0.05, 0.2]}}
    write_sweep(base, "base.yaml")
    (tmp_path / "sub").mkdir()
    child = write_sweep({"extends": "../base.yaml", "name": "child", "search": {"num_samples": 2},
                         "space": {"optim.lr": {"choice": [0.1]}}, "trial": {"search": {"epochs": 3}}},
                        "sub/child.yaml")
    cfg = load_sweep(child, env={})
    assert (cfg.name, cfg.search.num_samples, cfg.search.algorithm) == ("child", 2, "optuna")  # mappings merge
    assert {p.key: p.to_spec() for p in cfg.space} == {"search.budget": {"choice": [0.2, 0.5]},  # space: per key
                                                       "optim.lr": {"choice": [0.1]}}
    assert cfg.trial["search"] == {**kit.TINY_TRIAL["search"], "epochs": 3} and cfg.trial["seed"] == 0
    assert load_trial_section(child)["search"]["epochs"] == 3  # the one-search CLI reads the same chain
    fixed = write_sweep({"extends": "base.yaml", "name": "fixed", "space": {"search.budget": None},
                         "trial": {"search": {"budget": 0.3}}}, "fixed.yaml")
    cfg = load_sweep(fixed, env={})  # a null space entry removes the base's: the trial value holds
    assert [p.key for p in cfg.space] == ["optim.lr"] and cfg.trial["search"]["budget"] == 0.3
    write_sweep({"extends": "b.yaml"}, "a.yaml")
    write_sweep({"extends": "a.yaml"}, "b.yaml")
    assert main([str(tmp_path / "a.yaml"), "--dry-run"]) == 2
    assert "extend each other in a cycle" in capsys.readouterr().err
    write_sweep({"extends": "missing.yaml"}, "c.yaml")
    assert main([str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_a_preset_replaces_the_values_of_an_earlier_layer(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    """``search.preset`` written in an extending file, a sample or ``--set`` replaces the base
    file's values of its keys (the tiny trial's ``random_epochs: 1``); keys written beside it win.
    (An error would be silent otherwise: the preset applied by halves.)"""
    base = kit.tiny_sweep(tmp_path, name="base")
    base["space"] = {"optim.lr": {"choice": [0.05, 0.1]}}
    path = write_sweep(base, "base.yaml")

    def search(cfg: Any, overrides: dict[str, Any] | None = None) -> Any:
        return cfg.trial_config(overrides).search

    cfg = load_sweep(path, env={})
    assert (search(cfg).random_epochs, search(cfg).two_stage) == (1, False)
    sampled = search(cfg, {"search": {"method": "odbb", "preset": "short"}})
    assert (sampled.random_epochs, sampled.search_epochs, sampled.arch_lr, sampled.two_stage) == (0, 1, "auto", True)
    assert search(cfg, {"search": {"preset": "short", "noise_schedule": "linear"}}).noise_schedule == "linear"
    top = write_sweep({"extends": "base.yaml", "name": "top", "trial": {"search": {"preset": "short"}}}, "top.yaml")
    assert (search(load_sweep(top, env={})).random_epochs, search(load_sweep(top, env={})).two_stage) == (0, True)
    beside = write_sweep({"extends": "base.yaml", "name": "beside",
                          "trial": {"search": {"preset": "short", "noise_schedule": "linear"}}}, "beside.yaml")
    beside_search = search(load_sweep(beside, env={}))
    assert (beside_search.random_epochs, beside_search.noise_schedule) == (0, "linear")
    assert search(load_sweep(path, ["trial.search.preset=short"], env={})).random_epochs == 0
    with pytest.raises(ConfigError) as info:
        load_sweep(path, ["trial.search.preset=shrot"], env={})
    assert info.value.path == "--set trial.search.preset" and "did you mean 'short'" in str(info.value)


def test_validating_a_sweep_builds_its_models_without_importing_torch_dynamo(tmp_path: Path) -> None:
    """The driver validates every trial's model on the meta device before Ray starts; arithmetic on
    meta tensors runs Python decompositions that import torch._dynamo (about 1 s per driver)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import sys; from orchestrator.sweep import load_sweep; "
            f"load_sweep({str(root / 'configs' / 'fashion_mnist_deep_tuned.yaml')!r}); "
            "load_sweep(" + repr(str(root / "configs" / "quickstart.yaml")) + "); "
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
