"""Does the zero start of a converted model bias the search towards ``kxk``?

A function-preserving conversion starts every branch but ``kxk`` at zero (last BN weight or
online scale 0), so the straight-through gate gradient of those branches, <dL/dy, branch(x)>,
is exactly 0 at the first search step. This runs the search phase (one epoch of the sweep's
``search.preset: short``: alpha's lr sized to the epoch, noise annealed to 0) of one sweep file
on four starts of the same host and reports, per branch type, alpha after the search, the
branches the searched top-k keeps, the layers that keep ``kxk``, the mean |alpha gradient| at
the first step, and the searched supernet's validation accuracy before any retraining:

* ``fresh``: ``build_model`` without weights: every branch freshly initialised (as the
  project's own hosts);
* ``zero-start random``: the weights of a randomly initialised original, loaded
  function-preserving (the zero start without any trained information);
* ``zero-start trained``: the trained weights (``--weights``), function-preserving;
* ``trained, fresh branches``: the trained weights in ``kxk`` (and everything outside the
  blocks), every other branch freshly initialised (not function-preserving);
* ``zero-start trained, keep kxk``: as ``zero-start trained``, with every mask keeping every
  layer's ``kxk`` (``search.keep_kxk``, the default of a trial with weights).

The first four run with ``search.keep_kxk: false``, free to drop any branch.
    python benchmarks/convert_search_bias.py configs/fashion_mnist_shufflenet.yaml \\
        --weights runs/shufflenet_plain/export/fused_state_dict.pt [--seeds 0 1 2] [--set K=V ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from searchspace import BRANCH_TYPES, build_original, odbb_layers
from trainables.config.schema import parse_override
from trainables.config.sections import TrialConfig
from trainables.config.sweepfile import load_trial_section
from trainables.run.build import build_trial_model
from trainables.run.data import build_data, make_loader
from trainables.search.engine import SearchEngine

ARMS = ("fresh", "zero-start random", "zero-start trained", "trained, fresh branches", "zero-start trained, keep kxk")
SEARCH = {"search.method": "odbb", "search.preset": "short", "search.keep_kxk": False}


def _kxk_keys(model: torch.nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prefixes of every block, prefixes of what carries the trained conv and BN in a block)."""
    blocks = tuple(f"{name}." for name, _ in odbb_layers(model))
    carried = tuple(f"{name}.{part}." for name, block in odbb_layers(model)
                    for part in (("branches.kxk", "bn") if block.reparam == "online" else ("branches.kxk",)))
    return blocks, carried


def _model(arm: str, cfg: TrialConfig, weights: Path, random_weights: Path, num_classes: int,
           channels: int) -> torch.nn.Module:
    plain = TrialConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "weights": None}})
    if arm == "fresh":
        return build_trial_model(plain, num_classes, channels)
    chosen = random_weights if arm == "zero-start random" else weights
    with_weights = TrialConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "weights": str(chosen)}})
    model = build_trial_model(with_weights, num_classes, channels)
    if arm == "trained, fresh branches":
        fresh = build_trial_model(plain, num_classes, channels).state_dict()
        blocks, carried = _kxk_keys(model)
        state = {k: (fresh[k] if k.startswith(blocks) and not k.startswith(carried) else v)
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    return model


def _one(arm: str, cfg: TrialConfig, weights: Path, random_weights: Path) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    loader = make_loader(data.train, cfg.data.batch_size, train=True)
    val = make_loader(data.val, cfg.data.eval_batch_size, train=False)
    model = _model(arm, cfg, weights, random_weights, data.num_classes, data.in_channels)
    engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=len(loader), seed=cfg.seed,
                          device=torch.device("cpu"), rebuild=lambda: model, keep_kxk=arm.endswith("keep kxk"))
    first: list[torch.Tensor] = []
    handle = engine.alpha.register_hook(lambda g: first.append(g.detach().abs().clone()) if not first else None)
    engine.train_epoch(loader)  # the search epoch
    handle.remove()
    val_acc = engine.evaluate(val)[1]
    mask, alpha, grad = engine.eval_mask(), engine.alpha.detach(), first[0]
    per_type: dict[str, dict[str, list[float]]] = {t: {"alpha": [], "kept": [], "grad": []} for t in BRANCH_TYPES}
    offset, kxk_layers = 0, 0
    for (_, block), size in zip(engine.layers, engine.sizes):
        for i, name in enumerate(block.branch_names):
            per_type[name]["alpha"].append(float(alpha[offset + i]))
            per_type[name]["kept"].append(float(mask[offset + i]))
            per_type[name]["grad"].append(float(grad[offset + i]))
        kxk_layers += int(mask[offset + block.branch_names.index("kxk")])
        offset += size
    return {"arm": arm, "seed": cfg.seed, "val_acc": val_acc, "layers": len(engine.layers), "kxk_layers": kxk_layers,
            "alpha": {t: statistics.mean(v["alpha"]) for t, v in per_type.items() if v["alpha"]},
            "kept": {t: sum(v["kept"]) for t, v in per_type.items() if v["kept"]},
            "first_grad": {t: statistics.mean(v["grad"]) for t, v in per_type.items() if v["grad"]}}


def _table(runs: list[dict[str, Any]]) -> str:
    types = [t for t in BRANCH_TYPES if t in runs[0]["alpha"]]
    lines = ["| start | seeds | val acc after search | layers keeping kxk | "
             + " | ".join(f"{t}: alpha / kept / first grad" for t in types) + " |",
             "|---|---|---|---|" + "---|" * len(types)]
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        mean = statistics.mean
        cells = [f"{mean(r['alpha'][t] for r in rows):+.3f} / {mean(r['kept'][t] for r in rows):.1f} / "
                 f"{mean(r['first_grad'][t] for r in rows):.1e}" for t in types]
        lines.append(f"| {arm} | {len(rows)} | {mean(r['val_acc'] for r in rows):.4f} | "
                     f"{mean(r['kxk_layers'] for r in rows):.1f} / {rows[0]['layers']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep file whose trial: section (model, data, search budget) is used")
    parser.add_argument("--weights", required=True, help="trained state_dict of the original model")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a trial key")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the runs and the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trial = load_trial_section(Path(args.sweep))
    overrides = {**SEARCH, **dict(parse_override(text) for text in args.set)}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        random_weights = Path(tmp) / "random.pt"
        for seed in args.seeds:
            cfg = TrialConfig.from_overrides(trial, {**overrides, "seed": seed})
            torch.manual_seed(seed)
            original = build_original(cfg.model.host, 10, cfg.data.in_channels, cfg.model.options)
            torch.save(original.state_dict(), random_weights)
            for arm in args.arms:
                runs.append(_one(arm, cfg, Path(args.weights), random_weights))
                print(json.dumps(runs[-1]), flush=True)
    table = _table(runs)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": overrides, "runs": runs, "table": table}, indent=1))


if __name__ == "__main__":
    main()
