"""The Ray cluster a sweep runs on: connect, then check it before any trial starts.

``connect`` starts a local Ray or joins ``ray.address`` / ``RAY_ADDRESS`` (as set by
``ray job submit``), probing a ``host:port`` first so an unreachable address is a clear
error, not minutes of retries. ``check_cluster`` (pure, table-tested) refuses trials that
cannot fit: GPUs on a cluster without any, more workers than the nodes hold, a local-only
``storage_path`` on a multi-node cluster. Every problem is a ``ConfigError`` (exit 2).
``max_concurrent`` is how many trials may run at once (DDP trials capped at what fits).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

from ..sweep import SweepConfig, check_fit

__all__ = ["connect", "check_cluster", "check_storage", "validate_cluster", "max_concurrent",
           "ddp_trial_resources", "NETWORK_FILESYSTEMS"]

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
                       "glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.sshfs", "9p")
_PROBE_TIMEOUT_S = 5.0


def _address(cfg: SweepConfig) -> tuple[str | None, str]:
    """(address, the key that set it) from the sweep or ``RAY_ADDRESS``."""
    if cfg.ray.address:
        return cfg.ray.address, "ray.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def _probe(address: str, key: str) -> None:
    """TCP-connect to ``host:port`` (or ``ray://host:port``); ``auto`` is left to Ray."""
    if address == "auto" or address.startswith(("local", "http://", "https://")):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(key, f"expected auto, host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(key, f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
                               f"`ray start --head --port {port}` or fix the address") from None


def connect(cfg: SweepConfig, runtime_env: Mapping[str, Any] | None = None) -> None:
    """``ray.init``: join the cluster at the configured address, else start a local Ray
    (``runtime_env``: the job's, e.g. a ``worker_process_setup_hook``)."""
    import ray

    if ray.is_initialized():
        return
    address, key = _address(cfg)
    env = dict(runtime_env) if runtime_env else None
    if address is None:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), num_gpus=cfg.ray.num_gpus,
                 include_dashboard=cfg.ray.dashboard, dashboard_host="127.0.0.1", runtime_env=env)
        return
    _probe(address, key)
    try:
        ray.init(address=address, include_dashboard=cfg.ray.dashboard or None, runtime_env=env)
    except (ConnectionError, RuntimeError, TimeoutError) as err:
        raise ConfigError(key, f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None


def _mount_type(path: str) -> str | None:
    """Filesystem type of the mount holding ``path`` (from /proc/mounts; None if unknown)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(Path(path).resolve())
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def check_storage(storage_path: str, shared: bool, num_nodes: int) -> None:
    """Refuse a local-only ``storage_path`` on a cluster of several nodes."""
    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else "file"
    if num_nodes <= 1 or scheme != "file" or shared:
        return
    kind = _mount_type(storage_path.removeprefix("file://"))
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")):
        return
    raise ConfigError("storage_path", (
        f"{storage_path} is on a local disk ({kind or 'unknown filesystem'}) but the cluster has {num_nodes} nodes. "
        "Ray Tune 2.60 does not copy results to the head node: trials on other nodes would write checkpoints "
        "this driver (and any retry on another node, and --resume) cannot read. Use shared storage (an NFS "
        "path mounted at the same place on every node, or s3://..., gs://...), or, if this path IS the same "
        "shared folder on every node, say so with storage_shared: true"))


def check_cluster(cfg: SweepConfig, nodes: Sequence[Mapping[str, float]], where: str = "the cluster") -> int:
    """Raise ``ConfigError`` unless one trial fits on ``nodes`` (each node's resources) and the
    storage suits them; returns how many trials fit at once."""
    fit = check_fit(cfg.resources, nodes, where)
    check_storage(cfg.storage_path, cfg.storage_shared, len(nodes))
    return fit


def _live_nodes() -> list[Mapping[str, float]]:
    """The resources of every live node of the connected Ray."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def validate_cluster(cfg: SweepConfig) -> None:
    """After ``connect``: check that the trials fit the live cluster (``check_cluster``)."""
    address, _ = _address(cfg)
    check_cluster(cfg, _live_nodes(), f"the Ray cluster at {address}" if address else "the local Ray")


def max_concurrent(cfg: SweepConfig, nodes: Sequence[Mapping[str, float]] | None = None) -> int | None:
    """The trials Tune may run at once: ``search.max_concurrent``, for DDP trials capped at what
    fits ``nodes`` (default: the live cluster's). DDP trials hold no resources themselves (see
    ``ddp_trial_resources``), so Tune alone would start more than their workers can run."""
    if cfg.resources.workers == 1:
        return cfg.search.max_concurrent
    fit = check_cluster(cfg, _live_nodes() if nodes is None else nodes)
    return min(cfg.search.max_concurrent or fit, fit)


def ddp_trial_resources() -> dict[str, Any]:
    """Resources of a Tune trial that drives a TorchTrainer: no CPU or GPU (its Train
    workers reserve those themselves; a CPU here could starve them: 2 workers x 1 CPU on
    a 2-CPU Ray), just a token of memory, since Tune needs a non-empty request."""
    return {"cpu": 0, "memory": 2**20}
