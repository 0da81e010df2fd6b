"""Which trials of a finished sweep trained a network an earlier trial of it had already trained,
judged by the repeat check this code runs (``orchestrator.ray_tune.repeats.config_key``: the
trial over the sweep's ``trial:``, without the keys ``trainables.config.identity.inert_keys`` names).

    python benchmarks/repeat_audit.py configs/fashion_mnist_deep_recipe_asha.yaml [--name NAME]

Reads the sweep's child runs from its MLflow store (the sweep file's ``mlflow`` section; run it
where the sweep ran), oldest first. A trial equal to an earlier one counts as a repeat, with
whether the literal comparison of sampled values (the check before inert keys) would have
caught it, and its epochs: what skipping it saves. Only trials that ended with a result count
(finished or stopped early; failed ones have none to reuse), and trials that were already
repeats (tag ``repnas.repeat_of``) are not counted again. Equal keys should mean equal results: the
``val_acc`` of both is printed to check that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.ray_tune.repeats import config_key
from orchestrator.sweep import load_sweep
from orchestrator.tracking.parent_run import (
    TAG_PARENT,
    TAG_REPEAT_OF,
    TAG_SWEEP,
    TAG_TRIAL,
)
from orchestrator.tracking.runs import typed


def audit(sweep_file: Path, name: str | None = None) -> list[dict[str, object]]:
    """One row per trained trial of the sweep, oldest first: its name, ``val_acc``, epochs and,
    for a repeat, the earlier trial it repeats and whether the literal check caught it."""
    cfg = load_sweep(sweep_file, ["name=" + name] if name else [], env={})
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        raise SystemExit(f"no experiment {cfg.experiment_name!r} in {cfg.mlflow.tracking_uri}; run the sweep first")
    parents = {r.info.run_id for r in client.search_runs([experiment.experiment_id], f"tags.`{TAG_SWEEP}` = '{cfg.name}'")}
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=50000)
    seen: dict[str, str] = {}
    literal: set[str] = set()
    rows = []
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_PARENT) not in parents or TAG_REPEAT_OF in tags or run.info.status != "FINISHED":
            continue  # as the check itself: only finished (or scheduler-stopped) trials have a result to reuse
        params = {k: typed(v) for k, v in run.data.params.items()}
        point = {p.key: params[p.key.removeprefix("trial.")] for p in cfg.sampled}
        key, plain = config_key(point, cfg.trial), config_key(point)
        trial = tags.get(TAG_TRIAL, run.info.run_name)
        rows.append({"trial": trial, "val_acc": run.data.metrics.get("val_acc"), "epochs": run.data.metrics.get("epoch", 0.0),
                     "repeats": seen.get(key), "literal": plain in literal})
        seen.setdefault(key, trial)
        literal.add(plain)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--name", help="the sweep's name, if it ran under --set name=...")
    args = parser.parse_args()
    rows = audit(args.sweep, args.name)
    values = {r["trial"]: r["val_acc"] for r in rows}
    for row in rows:
        if row["repeats"]:
            how = "a literal repeat" if row["literal"] else "a repeat up to inert keys"
            print(f"{row['trial']} (val {row['val_acc']}, {row['epochs']:.0f} epochs) is {how} of {row['repeats']} "
                  f"(val {values[row['repeats']]})")
    repeats = [r for r in rows if r["repeats"]]
    epochs = sum(float(r["epochs"]) for r in rows)
    saved = sum(float(r["epochs"]) for r in repeats)
    print(f"{len(rows)} trials trained, {len(repeats)} of them repeats "
          f"({sum(not r['literal'] for r in repeats)} up to inert keys only): {saved:.0f} of {epochs:.0f} epochs")


if __name__ == "__main__":
    main()
