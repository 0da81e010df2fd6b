"""Ray's internals used inside a trial, in one place: what Ray does not promise to keep.

A Ray upgrade that moves one of these breaks here, and a fast test without a cluster says which
(``tests/trainables/test_trainables_ray_adapter.py``). The driver's half (snapshots, result grids,
checkpoint bookkeeping, logger names) is ``orchestrator.ray_tune.adapter``. Public Ray APIs
(``ray.tune``, ``ray.train``) are used directly elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["trial_cpus", "trial_storage", "user_callback_class", "worker_exception"]


def trial_cpus() -> float | None:
    """CPUs Ray reserved for the running Tune trial (None outside a trial)."""
    from ray import tune

    try:
        return tune.get_context().get_trial_resources().required_resources.get("CPU")
    except Exception:  # noqa: BLE001 - outside a Tune session
        return None


def trial_storage() -> tuple[str, pafs.FileSystem]:
    """(the running trial's folder on storage, its pyarrow filesystem)."""
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.trial_fs_path, storage.storage_filesystem


def user_callback_class() -> type:
    """Ray Train's ``UserCallback`` base (run on the Train controller after each report)."""
    from ray.train.v2.api.callback import UserCallback

    return UserCallback


def worker_exception(error: BaseException) -> BaseException:
    """The lowest failing rank's own exception inside a Train ``WorkerGroupError`` (else ``error``)."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return error
    wrapped = failures[min(failures)]
    return getattr(wrapped, "_base_exc", wrapped)  # Train's UserExceptionWithTraceback
