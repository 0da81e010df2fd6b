"""Does one trial fit the Ray nodes it may run on? Pure, checked before any trial starts.

The same check runs twice: on the local Ray a sweep will start (its size is known from the
file and the machine, so bad input exits 2 before Ray starts) and on a live cluster once
connected (``ray_tune.cluster``). Every problem is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from trainables.schema import ConfigError

from .schema import ResourcesConfig

__all__ = ["check_fit", "node_slots"]


def node_slots(node: Mapping[str, float], cpus: float, gpus: float) -> int:
    """How many workers of (``cpus``, ``gpus``) one node (its Ray resources) holds."""
    fits = [math.floor(node.get("CPU", 0.0) / cpus + 1e-9)] if cpus > 0 else []
    if gpus > 0:
        fits.append(math.floor(node.get("GPU", 0.0) / gpus + 1e-9))
    return min(fits) if fits else 0


def check_fit(resources: ResourcesConfig, nodes: Sequence[Mapping[str, float]], where: str, hint: str = "") -> int:
    """Raise ``ConfigError`` unless one trial of ``resources`` fits on ``nodes`` (each node's
    resources; ``where`` names them in the message, ``hint`` says how to grow them); returns
    how many such trials fit at once."""
    r = resources
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    want = f"{r.workers} worker(s) x ({r.cpus:g} CPU, {r.gpus:g} GPU)"
    if r.gpus > 0 and total_gpus == 0:
        raise ConfigError("resources.gpus", f"trials ask for {r.gpus:g} GPU(s) per worker but {where} has no GPUs "
                                            "(resources.gpus: 0 trains on CPU)")
    if r.gpus * r.workers > total_gpus:
        raise ConfigError("resources.gpus", f"a trial needs {want} = {r.gpus * r.workers:g} GPU(s) but {where} "
                                            f"has {total_gpus:g}{hint}")
    if r.cpus * r.workers > total_cpus:
        raise ConfigError("resources.cpus", f"a trial needs {want} = {r.cpus * r.workers:g} CPU(s) but {where} "
                                            f"has {total_cpus:g}{hint}")
    slots = sum(node_slots(n, r.cpus, r.gpus) for n in nodes)
    if slots < r.workers:
        per_node = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        key = "resources.workers" if r.workers > 1 else "resources.cpus"
        raise ConfigError(key, f"a trial needs {want} but no node arrangement of {where} holds them "
                               f"(nodes: {per_node}; a worker never spans nodes)")
    return slots // r.workers
