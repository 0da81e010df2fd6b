"""The cluster templates users copy (configs/cluster/), checked offline.

Kubernetes: native kinds (Secret, PersistentVolumeClaim) against the Kubernetes JSON schemas of
kubernetes-validate, strict (unknown keys refused). KubeRay's CRDs are not in those schemas, so a
RayJob / RayCluster gets a structural check of its own: every key must be one KubeRay v1 defines
(``_KUBERAY_KEYS``, from ray-operator/apis/ray/v1 rayjob_types.go and raycluster_types.go), every
pod template is validated strictly as a Kubernetes ``PodTemplate``, and the entrypoint is parsed by
the sweep's own CLI and loader. Slurm: ``bash -n``, then each script run under stub ``sbatch``,
``srun``, ``scontrol`` (and ``ray``/``python`` where the script calls them itself) that record
their arguments.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.run import parse_args
from orchestrator.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "configs" / "cluster"
K8S_VERSION = "1.33.0"

# The keys KubeRay v1 defines at each level we write (a subset of the CRD: what the CRD has and
# the templates do not use is not listed, so a typo such as `entrypont` is refused).
_KUBERAY_KEYS: dict[str, set[str]] = {
    "RayJob.spec": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
                    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
                    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
                    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
                    "shutdownAfterJobFinishes", "suspend", "schedule"},
    "RayClusterSpec": {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                       "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                       "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions"},
    "headGroupSpec": {"rayStartParams", "template", "serviceType", "headService", "enableIngress",
                      "resources", "labels"},
    "workerGroupSpec": {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                        "suspend", "numOfHosts", "scaleStrategy", "idleTimeoutSeconds", "resources", "labels"},
}
_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}


def _check_keys(level: str, data: dict[str, Any]) -> None:
    unknown = set(data) - _KUBERAY_KEYS[level]
    if unknown:
        raise ValueError(f"{level}: keys KubeRay v1 does not define: {sorted(unknown)}")


def _check_pod_template(where: str, template: dict[str, Any]) -> None:
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    try:
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise ValueError(f"{where}: {err.message} at {list(err.path)}") from None


def _check_group(level: str, group: dict[str, Any]) -> None:
    _check_keys(level, group)
    if not all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()):
        raise ValueError(f"{level}.rayStartParams: values must be strings (map[string]string)")


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    _check_keys("RayClusterSpec", spec)
    head = spec["headGroupSpec"]
    _check_group("headGroupSpec", head)
    _check_pod_template("headGroupSpec.template", head["template"])
    for group in spec.get("workerGroupSpecs", []):
        _check_group("workerGroupSpec", group)
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 2**31):
            raise ValueError(f"worker group {group['groupName']}: minReplicas <= replicas <= maxReplicas broken")
        _check_pod_template(f"workerGroupSpecs[{group['groupName']}].template", group["template"])


def validate_manifest(doc: dict[str, Any]) -> None:
    """Raise ``ValueError`` (KubeRay kinds) or kubernetes-validate's error (native kinds)."""
    if doc["apiVersion"] != "ray.io/v1":
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]):
        raise ValueError(f"metadata.name {doc['metadata']['name']!r} is not a DNS-1123 label")
    if doc["kind"] == "RayCluster":
        _check_cluster_spec(doc["spec"])
    elif doc["kind"] == "RayJob":
        spec = doc["spec"]
        _check_keys("RayJob.spec", spec)
        if spec.get("submissionMode", "K8sJobMode") not in _SUBMISSION_MODES:
            raise ValueError(f"RayJob.spec.submissionMode: expected one of {sorted(_SUBMISSION_MODES)}")
        for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            if key in spec and not (isinstance(spec[key], int) and spec[key] >= 0):
                raise ValueError(f"RayJob.spec.{key}: expected a non-negative integer")
        yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
        _check_cluster_spec(spec["rayClusterSpec"])
    else:
        raise ValueError(f"unexpected KubeRay kind {doc['kind']}")


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


@pytest.mark.parametrize("name", ["kuberay-rayjob.yaml", "kuberay-raycluster.yaml"])
def test_kubernetes_templates_validate(name: str) -> None:
    for doc in _docs(name):
        validate_manifest(doc)


def _rayjob() -> dict[str, Any]:
    return next(d for d in _docs("kuberay-rayjob.yaml") if d["kind"] == "RayJob")


@pytest.mark.parametrize("where, value", [
    (("spec", "entrypont"), "python x.py"),                                   # a typo
    (("spec", "submissionMode"), "Batch"),
    (("spec", "ttlSecondsAfterFinished"), "600"),
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"), 0),  # must be "0"
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplicas"), 1),       # below replicas: 2
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "terminationGracePeriod"), 120),
    (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "ports", 0,
      "containerPort"), "6379"),
])
def test_the_rayjob_check_refuses_broken_manifests(where: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(_rayjob())
    node: Any = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises((ValueError, kubernetes_validate.ValidationError)):
        validate_manifest(doc)


def test_the_rayjob_runs_the_sweep_as_users_expect() -> None:
    spec = _rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no trial
    capacity = {}
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert all(int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for c in pod["containers"])
        capacity[pod["nodeSelector"]["karpenter.sh/capacity-type"]] = pod.get("terminationGracePeriodSeconds", 30)
    assert set(capacity) == {"spot", "on-demand"} and capacity["spot"] >= 60  # time to checkpoint on notice
    # the entrypoint is a command the sweep CLI accepts, on a sweep file that loads
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-u", "-m", "orchestrator.run"]
    args = parse_args(argv[4:])
    assert args.auto_resume
    cfg = load_sweep(str(ROOT / args.sweep), args.set)
    assert cfg.storage_path.startswith("s3://")
    assert cfg.mlflow.tracking_uri.startswith("http://") and cfg.failure.max_failures == -1


# --- Slurm -------------------------------------------------------------------------------------

_STUB = """#!/bin/bash
printf '%s\\n' "$(basename "$0") $*" >> "$STUB_LOG"
case "$(basename "$0") $*" in
  "scontrol show hostnames"*) printf 'node1\\nnode2\\n' ;;
  srun*hostname*) echo "10.0.0.1 fe80::1" ;;
  *orchestrator.run*) # the sweep: runs until the job is requeued when STUB_BLOCK is set
    if [ -n "${STUB_BLOCK:-}" ]; then
      for _ in $(seq 3000); do grep -q '^scontrol requeue' "$STUB_LOG" && break; sleep 0.1; done
    fi ;;
esac
"""

# sbatch: turns the script's #SBATCH lines into the SLURM_* variables srun jobs see, then runs it
_SBATCH = """#!/bin/bash
printf '%s\\n' "sbatch $*" >> "$STUB_LOG"
opt() { sed -n "s/^#SBATCH --$1=//p" "$2" | head -1; }
export SLURM_JOB_NUM_NODES=$(opt nodes "$1") SLURM_CPUS_PER_TASK=$(opt cpus-per-task "$1")
export SLURM_GPUS_PER_TASK=$(opt gpus-per-task "$1") SLURM_JOB_ID=4242 SLURM_JOB_NODELIST="node[1-2]"
exec bash "$1"
"""


def _stubs(tmp_path: Path, *names: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(_SBATCH if name == "sbatch" else _STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "STUB_LOG": str(log), "RAY_WORKER_WAIT": "0"}


def _calls(env: dict[str, str]) -> list[str]:
    return Path(env["STUB_LOG"]).read_text().splitlines()


_SCRIPTS = ["slurm-symmetric-run.sh", "slurm-head-worker.sh"]
_SWEEP_CALL = {  # the one line that starts the sweep, per script
    "slurm-symmetric-run.sh": ("srun --nodes=2 --ntasks=2 --kill-on-bad-exit=0 ray symmetric-run --address "
                               "10.0.0.1:6379 --min-nodes 2 --num-cpus 32 --num-gpus 4 -- python -u -m "
                               "orchestrator.run configs/imagenet_cluster.yaml"),
    "slurm-head-worker.sh": "python -u -m orchestrator.run configs/imagenet_cluster.yaml",
}


@pytest.mark.parametrize("name", _SCRIPTS)
def test_slurm_scripts_parse_and_ask_for_requeue(name: str) -> None:
    subprocess.run(["bash", "-n", str(CLUSTER / name)], check=True)
    directives = re.findall(r"^#SBATCH (\S+)", (CLUSTER / name).read_text(), flags=re.MULTILINE)
    assert "--requeue" in directives and "--signal=B:USR1@300" in directives


@pytest.mark.parametrize("restarts", [None, "1"])
@pytest.mark.parametrize("name", _SCRIPTS)
def test_slurm_scripts_start_ray_and_the_sweep(tmp_path: Path, name: str, restarts: str | None) -> None:
    env = _stubs(tmp_path, "sbatch", "srun", "scontrol", "ray", "python")
    if restarts:
        env["SLURM_RESTART_COUNT"] = restarts  # Slurm sets it when it runs a requeued job again
    done = subprocess.run(["sbatch", str(CLUSTER / name)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    calls = _calls(env)
    expected = _SWEEP_CALL[name] + (" --resume" if restarts else "")
    assert expected in calls, calls
    assert "srun --nodes=1 --ntasks=1 -w node1 hostname --ip-address" in calls
    if name == "slurm-head-worker.sh":
        assert ("srun --nodes=1 --ntasks=1 -w node1 ray start --head --node-ip-address=10.0.0.1 --port=6379 "
                "--num-cpus 32 --num-gpus 4 --block") in calls
        assert ("srun --nodes=1 --ntasks=1 --exclude=node1 ray start --address 10.0.0.1:6379 "
                "--num-cpus 32 --num-gpus 4 --block") in calls
        assert calls.index("ray status --address 10.0.0.1:6379") < calls.index(expected)  # head up first


@pytest.mark.parametrize("name", _SCRIPTS)
def test_slurm_scripts_requeue_themselves_near_the_time_limit(tmp_path: Path, name: str) -> None:
    env = {**_stubs(tmp_path, "sbatch", "srun", "scontrol", "ray", "python"), "STUB_BLOCK": "1"}
    job = subprocess.Popen(["sbatch", str(CLUSTER / name)], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(3000):  # until the sweep runs
            if any(_SWEEP_CALL[name] in c for c in _calls(env)):
                break
            time.sleep(0.1)
        job.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@300` sends 5 minutes before the limit
        out, err = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, err
    assert "scontrol requeue 4242" in _calls(env) and "requeueing job 4242" in out
    assert json.dumps(_calls(env)).count("orchestrator.run") == 1  # the sweep ran once, not restarted
