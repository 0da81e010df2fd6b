"""Can Ray place one trial, and on which nodes? Pure, checked before any trial starts.

``check_request`` holds Ray's rules for a trial's own request (whatever the nodes):
a GPU fraction lies within one GPU, and DDP workers of at most half a GPU would share one.
``check_fit`` adds the nodes: it runs on the local Ray a sweep will start (its size is
known from the file and the machine, so bad input exits 2 before Ray starts) and on a live
cluster once connected (``ray_tune.cluster``). Every problem is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from trainables.errors import ConfigError

if TYPE_CHECKING:
    from .schema import ResourcesConfig

__all__ = ["check_request", "check_fit", "node_slots", "GPU_STEP"]

GPU_STEP = 1e-4
"""Ray counts resources in steps of 0.0001: a smaller non-zero request is an error there."""
_EPS = 1e-9


def check_request(resources: ResourcesConfig) -> None:
    """Raise ``ConfigError`` for a GPU request Ray cannot place on any cluster.

    - A fraction of a GPU is placed within one GPU, so above 1 only whole GPUs exist
      (Ray: "GPU resource quantities >1 must be whole numbers").
    - Ray fills one GPU before the next, so the DDP workers of one trial that ask for at
      most half a GPU each land on the same GPU (ray-project/ray#48012; with more than half,
      no two fit on one GPU and each gets its own), and NCCL refuses two ranks of one
      process group on one GPU ("Duplicate GPU detected").
    """
    gpus, workers = resources.gpus, resources.workers
    if 0 < gpus < GPU_STEP:
        raise ConfigError("resources.gpus", f"Ray counts GPUs in steps of {GPU_STEP:g}, got {gpus:g}")
    if gpus > 1 and not float(gpus).is_integer():
        raise ConfigError("resources.gpus", f"expected a fraction below 1 (several trials share one GPU) or a whole "
                                            f"number of GPUs, got {gpus:g}: Ray places a fraction within one GPU")
    if workers > 1 and 0 < gpus <= 0.5:
        raise ConfigError("resources.gpus", (
            f"{workers} DDP workers x {gpus:g} GPU cannot train: Ray Train places workers of at most half a GPU "
            "on the same GPU (it fills one GPU before the next) and NCCL refuses two ranks of one trial on one "
            "GPU (\"Duplicate GPU detected\"). Give each worker more than half a GPU (e.g. resources.gpus: 1), "
            "or pack one-worker trials (resources.workers: 1, resources.gpus: 0.25)"))


def node_slots(node: Mapping[str, float], cpus: float, gpus: float) -> int:
    """How many workers of (``cpus``, ``gpus``) one node (its Ray resources) holds; a
    fraction of a GPU fits within one GPU (0.4 GPU: two per GPU, not five on two GPUs)."""
    fits = [math.floor(node.get("CPU", 0.0) / cpus + _EPS)] if cpus > 0 else []
    if gpus > 0:
        have = node.get("GPU", 0.0)
        per_gpu = math.floor(1 / gpus + _EPS) if gpus < 1 else 0
        fits.append(math.floor(have + _EPS) * per_gpu if per_gpu else math.floor(have / gpus + _EPS))
    return min(fits) if fits else 0


def check_fit(resources: ResourcesConfig, nodes: Sequence[Mapping[str, float]], where: str, hint: str = "") -> int:
    """Raise ``ConfigError`` unless one trial of ``resources`` fits on ``nodes`` (each node's
    resources; ``where`` names them in the message, ``hint`` says how to grow them); returns
    how many such trials fit at once."""
    r = resources
    check_request(r)
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    want = f"{r.workers} worker(s) x ({r.cpus:g} CPU, {r.gpus:g} GPU)"
    if r.gpus > 0 and total_gpus == 0:
        raise ConfigError("resources.gpus", f"trials ask for {r.gpus:g} GPU(s) per worker but {where} has no GPUs "
                                            "(resources.gpus: 0 trains on CPU)")
    if r.gpus * r.workers > total_gpus + _EPS:
        raise ConfigError("resources.gpus", f"a trial needs {want} = {r.gpus * r.workers:g} GPU(s) but {where} "
                                            f"has {total_gpus:g}{hint}")
    if r.cpus * r.workers > total_cpus + _EPS:
        raise ConfigError("resources.cpus", f"a trial needs {want} = {r.cpus * r.workers:g} CPU(s) but {where} "
                                            f"has {total_cpus:g}{hint}")
    slots = sum(node_slots(n, r.cpus, r.gpus) for n in nodes)
    if slots < r.workers:
        per_node = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        gpu_bound = sum(node_slots(n, 0, r.gpus) for n in nodes) < r.workers if r.gpus > 0 else False
        key = "resources.workers" if r.workers > 1 else "resources.gpus" if gpu_bound else "resources.cpus"
        raise ConfigError(key, f"a trial needs {want} but no node arrangement of {where} holds them "
                               f"(nodes: {per_node}; a worker never spans nodes){hint}")
    return slots // r.workers
