"""ASHA judges a two-stage trial (``search.preset: short``) by the network it delivers: its rungs
count ``epochs_trained``, which restarts at the rebuild, so the search epoch before it (a
supernet under noise, thrown away) is never compared with other trials' trained networks.
Real ``ASHAScheduler`` (from ``make_scheduler``), real validation curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from orchestrator.ray_tune.tuner import RUNG_TIME, make_scheduler
from orchestrator.sweep import parse_sweep

# (epochs_trained, val_acc) per epoch of three real trials (scikit-learn digits, repvgg_tiny, ODBB
# budget 0.5, 6 epochs, lr 0.1, seed 0, one thread): the short preset (1 search epoch, then the
# searched blocks retrained from scratch), ODBB with the paper's continued schedule, plain.
CURVES = {
    "short": [(0, 0.3287), (1, 0.9359), (2, 0.9443), (3, 0.9777), (4, 0.9833), (5, 0.9833)],
    "continuous": [(1, 0.234), (2, 0.9109), (3, 0.9471), (4, 0.961), (5, 0.9638), (6, 0.9694)],
    "plain": [(1, 0.8774), (2, 0.9248), (3, 0.9749), (4, 0.9889), (5, 0.9944), (6, 0.9944)],
}


def _run(cfg: Any, time_attr: str) -> dict[str, int]:
    """Feed the curves to the sweep's ASHA epoch by epoch (plain and continuous report each epoch
    first, as the faster trials would); the epoch each trial is stopped at (0: never)."""
    scheduler = make_scheduler(cfg)
    scheduler._time_attr = time_attr  # test-only: the same ASHA, rungs in another time
    trials = {name: Trial("repnas_trial", trial_id=name, stub=True) for name in CURVES}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    stopped: dict[str, int] = {name: 0 for name in CURVES}
    for epoch in range(6):
        for name in ("plain", "continuous", "short"):
            if stopped[name]:
                continue
            trained, val = CURVES[name][epoch]
            result = {"training_iteration": epoch + 1, "epochs_trained": trained, "val_acc": val}
            if scheduler.on_trial_result(None, trials[name], result) == TrialScheduler.STOP and epoch < 5:
                stopped[name] = epoch + 1
    return stopped


def test_asha_keeps_the_two_stage_trial_that_iteration_rungs_stop(tmp_path: Path, kit: Any) -> None:
    sweep = kit.tiny_sweep(tmp_path, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    sweep["trial"]["search"] = {"epochs": 6, "random_epochs": 0, "search_epochs": 1}
    cfg = parse_sweep(sweep)
    assert RUNG_TIME == "epochs_trained" and make_scheduler(cfg)._time_attr == RUNG_TIME
    # judged by its search epoch (a supernet under noise, 0.33 vs plain's 0.88): stopped at once
    assert _run(cfg, "training_iteration") == {"plain": 0, "continuous": 1, "short": 1}
    # judged by its retrained network at equal epochs: kept through rungs 1 and 2, and stopped only
    # at rung 4, where plain's network is better (0.9833 vs 0.9889): ASHA's own verdict, fairly reached
    assert _run(cfg, RUNG_TIME) == {"plain": 0, "continuous": 1, "short": 5}


def test_a_trial_the_scheduler_stopped_says_so_on_the_console(capsys: Any) -> None:
    """Ray marks a scheduler-stopped trial's last result ``done`` without the final metrics: its
    console line says it stopped early, not that it finished."""
    from orchestrator.ray_tune.progress import TrialLines
    from trainables.config.metrics import FINAL_METRICS

    lines = TrialLines(["val_acc"], [])
    ended = {"training_iteration": 4, "epoch": 4, "time_total_s": 12.0, "val_acc": 0.9, "done": True}
    for name, result in (("stopped", ended), ("finished", {**ended, **{k: 1.0 for k in FINAL_METRICS}})):
        trial = Trial("repnas_trial", trial_id=name, stub=True)
        trial.run_metadata.last_result = result
        lines.on_trial_complete(0, [trial], trial)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("trial repnas_trial_stopped stopped early (4 epochs, 12 s): val_acc=0.9"), out
    assert out[1].startswith("trial repnas_trial_finished finished (4 epochs, 12 s): val_acc="), out
