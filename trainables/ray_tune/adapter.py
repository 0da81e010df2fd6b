"""Ray's internals used inside a trial, in one place: what Ray does not promise to keep.

A Ray upgrade that moves one of these breaks here, and a fast test without a cluster says which
(``tests/trainables/test_trainables_ray_adapter.py``). The driver's half (snapshots, result grids,
checkpoint bookkeeping, logger names) is ``orchestrator.ray_tune.adapter``. Public Ray APIs
(``ray.tune``, ``ray.train``) are used directly elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["function_trainable", "trial_cpus", "trial_storage", "user_callback_class", "worker_exception"]


def function_trainable(train_func: Callable[[dict[str, Any]], None], on_setup: Callable[[], None],
                       on_cleanup: Callable[[], None]) -> type:
    """The Trainable class Tune builds from ``train_func`` (``ray.tune.trainable.wrap_function``), with
    ``on_setup`` run first in its ``setup`` and ``on_cleanup`` last in its ``cleanup``.

    Why: Tune runs ``train_func`` on a ``RunnerThread``, but the Trainable's ``setup`` (called by
    ``Trainable.__init__``, the actor's creation task) and ``cleanup`` (its ``stop``) run on the actor's
    main thread, the only one that can install a signal handler. Tune names trials after the class's
    ``_name``: ``wrap_function`` sets it to the function's name, so trials keep ``<function>_<id>``.
    """
    from ray.tune.trainable import wrap_function

    base: Any = wrap_function(train_func)

    class TuneTrial(base):  # type: ignore[misc,valid-type]
        def setup(self, config: dict[str, Any]) -> None:
            on_setup()
            super().setup(config)

        def cleanup(self) -> None:
            try:
                super().cleanup()
            finally:
                on_cleanup()

    return TuneTrial


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
