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
    assert callable(base.after_report)
    assert list(inspect.signature(base.after_report).parameters)[1:] == ["run_context", "metrics", "checkpoint"]
    own = ValueError("rank 1's own error")
    error = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb"), 0: RuntimeError("rank 0")})
    assert isinstance(ray_adapter.worker_exception(error), RuntimeError)  # the lowest failing rank's
    wrapped = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb")})
    assert ray_adapter.worker_exception(wrapped) is own
    plain = RuntimeError("not a worker group")
    assert ray_adapter.worker_exception(plain) is plain


def test_function_trainable_keeps_the_name_and_hooks_the_main_thread() -> None:
    """``function_trainable``: Tune's class for the function, named as it (trials ``repnas_trial_<id>``),
    picklable; its setup/cleanup are where Tune runs them on the actor's main thread."""
    from ray import cloudpickle, tune
    from ray._private.worker import Worker
    from ray.tune.experiment import Experiment
    from ray.tune.experiment.trial import Trial
    from ray.tune.trainable import FunctionTrainable, Trainable

    calls: list[str] = []

    def repnas_trial(config: dict[str, object]) -> None:
        calls.append("train")

    trainable = ray_adapter.function_trainable(repnas_trial, on_setup=lambda: calls.append("setup"),
                                               on_cleanup=lambda: calls.append("cleanup"))
    assert issubclass(trainable, FunctionTrainable)
    assert Experiment.get_trainable_name(trainable) == "repnas_trial"
    assert Experiment.get_trainable_name(tune.with_resources(trainable, {"cpu": 1})) == "repnas_trial"
    assert cloudpickle.loads(cloudpickle.dumps(trainable))._name == "repnas_trial"
    # Tune calls setup from Trainable.__init__ (the actor's creation task: its main thread), cleanup from stop
    assert "self.setup(" in inspect.getsource(Trainable.__init__)
    assert "self.cleanup()" in inspect.getsource(Trainable.stop)
    assert "RunnerThread(" in inspect.getsource(FunctionTrainable._start)  # the function runs off the main thread
    # a Ray worker exits on SIGTERM through its main-thread handler: what the preemption notice passes on to
    assert "set_sigterm_handler" in inspect.getsource(Worker.main_loop)
    # a trial's own error (TrialPreempted) is one of failure.max_failures
    assert "num_failures += 1" in inspect.getsource(Trial._handle_ray_task_error)
