"""Ray's internals a trial uses (``trainables.ray_tune.adapter``), each checked against the
installed Ray without a cluster: one of these fails when a Ray upgrade moves what it uses."""

from __future__ import annotations

import inspect

from trainables.ray_tune import adapter as ray_adapter


def test_trial_context_outside_a_trial() -> None:
    from ray import tune

    assert ray_adapter.trial_cpus() is None  # not in a Tune session
    context = tune.get_context()
    assert callable(context.get_storage) and callable(context.get_trial_resources)
    from ray.train._internal.storage import StorageContext

    storage = StorageContext("/tmp/repnas-adapter", "exp", trial_dir_name="t")
    assert storage.trial_fs_path.endswith("/exp/t") and storage.storage_filesystem is not None


def test_train_callback_and_worker_errors() -> None:
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    base = ray_adapter.user_callback_class()
    assert callable(getattr(base, "after_report"))
    assert list(inspect.signature(base.after_report).parameters)[1:] == ["run_context", "metrics", "checkpoint"]
    own = ValueError("rank 1's own error")
    error = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb"), 0: RuntimeError("rank 0")})
    assert isinstance(ray_adapter.worker_exception(error), RuntimeError)  # the lowest failing rank's
    wrapped = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb")})
    assert ray_adapter.worker_exception(wrapped) is own
    plain = RuntimeError("not a worker group")
    assert ray_adapter.worker_exception(plain) is plain
