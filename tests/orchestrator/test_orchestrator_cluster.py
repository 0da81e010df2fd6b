"""Cluster checks: bad resources (table), GPU fractions Ray cannot place, an unreachable
address, DDP trials through the CLI, and a real two-node Ray cluster on 127.0.0.1 sharing one
storage folder (a sweep across it, and one that loses its second node mid-trial)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from _cluster import LocalCluster, Node
from _servers import free_port
from mlflow.tracking import MlflowClient

from orchestrator.ray_tune.cluster import check_cluster, check_storage, max_concurrent
from orchestrator.sweep import ResourcesConfig, check_fit, parse_sweep
from trainables.errors import ConfigError

CPU2 = [{"CPU": 2.0}]
TWO_NODES = [{"CPU": 1.0}, {"CPU": 1.0}]
GPU_NODES = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
GPU4 = [{"CPU": 16.0, "GPU": 4.0}]


def _cfg(kit: Any, tmp_path: Path, **resources: Any) -> Any:
    sweep = kit.tiny_sweep(tmp_path, ray={"address": "auto", "num_cpus": None},
                           resources=resources)
    return parse_sweep(sweep)


@pytest.mark.parametrize("resources, nodes, key, words", [
    ({"gpus": 1}, CPU2, "resources.gpus", "has no GPUs"),
    ({"gpus": 2, "workers": 2}, GPU_NODES, "resources.gpus", "needs 2 worker(s) x (1 CPU, 2 GPU) = 4 GPU(s)"),
    ({"gpus": 1, "workers": 4}, GPU_NODES, "resources.gpus", "has 2"),
    ({"cpus": 2, "workers": 2}, CPU2, "resources.cpus", "4 CPU(s)"),
    ({"cpus": 1, "workers": 2}, [{"CPU": 1.5}, {"CPU": 0.5}], "resources.workers", "a worker never spans nodes"),
    ({"cpus": 3}, [{"CPU": 2.0}, {"CPU": 2.0}], "resources.cpus", "no node arrangement"),
    ({"gpus": 2}, GPU_NODES, "resources.gpus", "no node arrangement"),  # 2 GPUs in all, but 1 per node
    ({"gpus": 0.25}, CPU2, "resources.gpus", "has no GPUs"),
    ({"gpus": 0.75, "workers": 2}, [{"CPU": 8.0, "GPU": 1.0}], "resources.gpus", "= 1.5 GPU(s) but the cluster has 1"),
    ({"gpus": 0.6, "workers": 4}, [{"CPU": 16.0, "GPU": 3.0}], "resources.workers",
     "no node arrangement"),  # 2.4 GPUs <= 3, but one such worker per GPU
])
def test_trials_that_cannot_fit_are_refused(kit: Any, tmp_path: Path, resources: dict[str, Any],
                                            nodes: list[dict[str, float]], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_cluster(_cfg(kit, tmp_path, **resources), nodes)
    assert err.value.path == key and words in str(err.value)


@pytest.mark.parametrize("resources, nodes, fit", [
    ({"cpus": 1}, TWO_NODES, 2),
    ({"cpus": 1, "workers": 2}, TWO_NODES, 1),
    ({"cpus": 4, "gpus": 1, "workers": 2}, GPU_NODES, 1),
    ({"cpus": 1, "gpus": 0.5}, GPU_NODES, 4),
    ({"cpus": 1, "gpus": 0.25}, GPU_NODES, 8),
    ({"cpus": 1, "gpus": 0.4}, GPU_NODES, 4),  # two per GPU: a fraction never spans GPUs
    ({"cpus": 1, "gpus": 0.75, "workers": 2}, GPU_NODES, 1),  # over half a GPU each: one worker per GPU
    ({"cpus": 1, "gpus": 2}, GPU4, 2),
])
def test_trials_that_fit_report_how_many_run_at_once(kit: Any, tmp_path: Path, resources: dict[str, Any],
                                                     nodes: list[dict[str, float]], fit: int) -> None:
    cfg = dataclasses.replace(_cfg(kit, tmp_path, **resources), storage_shared=True)
    assert check_cluster(cfg, nodes) == fit


@pytest.mark.parametrize("resources, words", [
    ({"gpus": 0.5, "workers": 2}, "2 DDP workers x 0.5 GPU cannot train: Ray Train places workers of at most half a GPU"),
    ({"gpus": 0.25, "workers": 4}, "4 DDP workers x 0.25 GPU cannot train"),
    ({"gpus": 1.5}, "expected a fraction below 1 (several trials share one GPU) or a whole number of GPUs, got 1.5"),
    ({"gpus": 2.5, "workers": 2}, "got 2.5"),
    ({"gpus": 0.00005}, "Ray counts GPUs in steps of 0.0001"),
])
def test_gpu_requests_ray_cannot_place_are_refused_anywhere(kit: Any, tmp_path: Path, resources: dict[str, Any],
                                                            words: str) -> None:
    """Refused by the node check (local Ray, live cluster) and, for a cluster, when the file is
    read, before connecting: no nodes make these placeable."""
    with pytest.raises(ConfigError) as err:
        check_fit(ResourcesConfig(**{"cpus": 1.0, **resources}), GPU4, "the cluster")
    assert err.value.path == "resources.gpus" and words in str(err.value)
    with pytest.raises(ConfigError) as err:
        _cfg(kit, tmp_path, **resources)
    assert err.value.path == "resources.gpus" and words in str(err.value)


@pytest.mark.parametrize("workers, asked, want", [(1, None, None), (1, 8, 8), (2, None, 2), (2, 1, 1), (2, 8, 2)])
def test_ddp_trials_at_once_are_capped_at_what_fits_and_the_config_is_kept(kit: Any, tmp_path: Path, workers: int,
                                                                            asked: int | None, want: int | None) -> None:
    sweep = kit.tiny_sweep(tmp_path, ray={"address": "auto", "num_cpus": None}, resources={"cpus": 1, "workers": workers},
                           search={"max_concurrent": asked})
    cfg = parse_sweep(sweep)
    assert max_concurrent(cfg, [{"CPU": 4.0}]) == want
    assert cfg.search.max_concurrent == asked  # computed, never written back into the validated config


@pytest.mark.parametrize("path, shared, nodes, ok", [
    ("/tmp/x", False, 1, True), ("/tmp/x", False, 2, False), ("/tmp/x", True, 2, True),
    ("s3://bucket/sweeps", False, 3, True), ("file:///tmp/x", False, 2, False),
])
def test_local_storage_is_refused_on_several_nodes(path: str, shared: bool, nodes: int, ok: bool) -> None:
    if ok:
        check_storage(path, shared, nodes)
        return
    with pytest.raises(ConfigError, match="does not copy results to the head node.*storage_shared: true"):
        check_storage(path, shared, nodes)


def test_unreachable_address_is_a_clear_error_before_anything_starts(kit: Any, tmp_path: Path,
                                                                     write_sweep: Callable[..., Path]) -> None:
    port = free_port()
    path = write_sweep(kit.tiny_sweep(tmp_path, ray={"address": f"127.0.0.1:{port}", "num_cpus": None}))
    started = time.monotonic()
    out = kit.run_cli([str(path)], cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    assert f"ray.address: no Ray cluster answers at 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - started < 40
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("repnas_sweep.json"))


def test_gpu_request_on_a_cpu_only_local_ray_exits_2_before_ray_starts(kit: Any, tmp_path: Path,
                                                                      write_sweep: Callable[..., Path]) -> None:
    """The local Ray's size is known from the file: refused before it starts (the same check
    on a live cluster: test_sweep_spans_a_two_node_cluster)."""
    path = write_sweep(kit.tiny_sweep(tmp_path, ray={"num_cpus": 2, "num_gpus": 0}, resources={"cpus": 1, "gpus": 1}))
    out = kit.run_cli([str(path)], cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "resources.gpus: trials ask for 1 GPU(s) per worker but the local Ray has no GPUs" in out.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_fractional_gpus_for_ddp_workers_exit_2_before_ray_starts(kit: Any, tmp_path: Path,
                                                                  write_sweep: Callable[..., Path]) -> None:
    """On the local Ray and on a cluster (RAY_ADDRESS: refused before connecting; nothing listens there)."""
    path = write_sweep(kit.tiny_sweep(tmp_path, ray={"num_cpus": 2, "num_gpus": 0},
                                      resources={"cpus": 1, "gpus": 0.5, "workers": 2}))
    for env in ({}, {"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}):
        out = kit.run_cli([str(path), *(["--set", "ray.num_cpus=null", "--set", "ray.num_gpus=null"] if env else [])],
                          cwd=tmp_path, timeout=60, **env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "resources.gpus: 2 DDP workers x 0.5 GPU cannot train" in out.stderr, out.stderr[-2000:]
        assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_ddp_trial_through_the_cli_reports_like_one_worker(kit: Any, tmp_path: Path,
                                                          write_sweep: Callable[..., Path]) -> None:
    """resources.workers: 2 on a 2-CPU Ray: no deadlock, every epoch in MLflow, fused model."""
    sweep = kit.tiny_sweep(tmp_path, name="ddp", resources={"cpus": 1, "workers": 2},
                           search={"num_samples": 1, "max_concurrent": None})
    out = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, kids = kit.children(MlflowClient(sweep["mlflow"]["tracking_uri"]), "ddp")
    assert len(kids) == 1 and kids[0].info.status == "FINISHED"
    client = MlflowClient(sweep["mlflow"]["tracking_uri"])
    assert [m.step for m in client.get_metric_history(kids[0].info.run_id, "val_acc")] == [1, 2]
    assert {"fused_val_acc", "fused_max_logit_diff"} <= set(kids[0].data.metrics)
    trial = next((tmp_path / "ray_results" / "ddp").glob("repnas_trial_*"))
    last = sorted(trial.glob("checkpoint_*"))[-1]
    assert (last / "export" / "summary.json").is_file()
    assert len([p for p in trial.glob("ddp-*/checkpoint_*") if p.is_dir()]) <= 1  # Train keeps one copy


class TwoNodes(NamedTuple):
    address: str  # the head's host:port
    node2: Node  # the second node (its processes descend from its `ray start --block`)


@pytest.fixture
def two_node_cluster(kit: Any) -> Iterator[TwoNodes]:
    """A head (1 CPU) and a second node (1 CPU, resource node2) on 127.0.0.1, own temp dirs;
    a node lost is declared dead after ~3 s (Ray's default health check takes ~15 s)."""
    cluster = LocalCluster(kit.cli_env(RAY_AUTH_MODE="disabled",  # a test cluster on 127.0.0.1 only
                                       RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3"))
    try:
        cluster.head()
        yield TwoNodes(cluster.address, cluster.add(resources='{"node2": 1}'))
    finally:
        cluster.stop()


@pytest.mark.slow
def test_sweep_spans_a_two_node_cluster(kit: Any, tmp_path: Path, write_sweep: Callable[..., Path],
                                        two_node_cluster: TwoNodes) -> None:
    """RAY_ADDRESS (as under `ray job submit`), shared storage: trials on both nodes, all in MLflow."""
    address = two_node_cluster.address
    shared = tmp_path / "shared"
    sweep = kit.tiny_sweep(tmp_path, name="two", storage_path=str(shared), ray={"num_cpus": None},
                           resources={"cpus": 1}, search={"num_samples": 2, "max_concurrent": 2})
    path = write_sweep(sweep)
    env = {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"}
    refused = kit.run_cli([str(path), "--set", "name=two-refused"], cwd=tmp_path, timeout=120, **env)
    assert refused.returncode == 2 and "storage_shared: true" in refused.stderr, refused.stderr[-2000:]
    gpus = kit.run_cli([str(path), "--set", "name=two-gpus", "--set", "storage_shared=true", "--set", "resources.gpus=1"],
                       cwd=tmp_path, timeout=120, **env)  # checked on the live cluster, not on this host
    assert gpus.returncode == 2, gpus.stderr[-2000:]
    assert f"resources.gpus: trials ask for 1 GPU(s) per worker but the Ray cluster at {address} has no GPUs" \
        in gpus.stderr and not (shared / "two-gpus").exists()
    out = kit.run_cli([str(path), "--set", "storage_shared=true"], cwd=tmp_path, timeout=240, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = set()
    for result in (shared / "two").glob("repnas_trial_*/result.json"):
        nodes |= {json.loads(line)["node_id"] for line in result.read_text().splitlines()}
    assert len(nodes) == 2, nodes
    _, kids = kit.children(MlflowClient(sweep["mlflow"]["tracking_uri"]), "two")
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)


def _rows(trial: Path) -> list[dict[str, Any]]:
    path = trial / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.mark.slow
@pytest.mark.reliability
def test_sweep_survives_losing_its_second_node(kit: Any, tmp_path: Path, write_sweep: Callable[..., Path],
                                               two_node_cluster: TwoNodes) -> None:
    """A spot node preempted: every process of the second node SIGKILLed while a trial trains
    there; that trial continues from its last checkpoint on the head (shared storage,
    failure.max_failures: 1), the sweep exits 0, one MLflow child run per trial, each epoch once."""
    epochs = 5
    shared = tmp_path / "shared"
    sweep = kit.tiny_sweep(tmp_path, name="spot", storage_path=str(shared), storage_shared=True,
                           ray={"num_cpus": None}, resources={"cpus": 1}, failure={"max_failures": 1},
                           search={"num_samples": 2, "max_concurrent": 2})  # one trial per node: 1 CPU each
    sweep["trial"]["search"]["epochs"] = epochs
    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", str(write_sweep(sweep))], cwd=tmp_path,
                                  env=kit.cli_env(RAY_ADDRESS=two_node_cluster.address, RAY_AUTH_MODE="disabled"),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        victim, node2 = None, set(two_node_cluster.node2.pids())
        deadline = time.monotonic() + 180
        while victim is None:  # the trial on node 2, once it has a checkpoint (its first epoch reported)
            assert driver.poll() is None and time.monotonic() < deadline, "no trial reported from node 2"
            node2 |= set(two_node_cluster.node2.pids())
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                victim = next((t for t in (shared / "spot").glob("repnas_trial_*")
                               if any(r["pid"] in node2 for r in _rows(t))), None)
            time.sleep(0.1)
        lost = _rows(victim)
        assert lost[-1]["epoch"] < epochs, "the trial on node 2 ended before its node was lost"
        pids = two_node_cluster.node2.lose()  # all at once, as a preempted machine
        driver.wait(timeout=300)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert driver.returncode == 0, text[-5000:]
    rows = _rows(victim)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), [r["epoch"] for r in rows]  # none twice
    moved = [r for r in rows if r["pid"] not in pids]
    assert moved and moved[0]["epoch"] > 1, "restarted from epoch 1 instead of its checkpoint"
    assert {r["node_id"] for r in moved}.isdisjoint(r["node_id"] for r in lost)  # on the surviving node
    assert "Failure # 1" in (victim / "error.txt").read_text()
    said = [line for line in text.splitlines() if line.startswith(f"trial {victim.name} failed after epoch ")]
    assert len(said) == 1 and "retrying from its last checkpoint" in said[0], text[-5000:]
    client = MlflowClient(sweep["mlflow"]["tracking_uri"])
    _, kids = kit.children(client, "spot")
    assert sorted(k.data.tags["repnas.trial_name"] for k in kids) == sorted(
        p.name for p in (shared / "spot").glob("repnas_trial_*"))
    for kid in kids:
        assert kid.info.status == "FINISHED" and "repnas.model_uri" in kid.data.tags, kid.data.tags
        for key in ("val_acc", "train_loss", "epoch"):
            steps = [m.step for m in client.get_metric_history(kid.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (kid.info.run_name, key, steps)
