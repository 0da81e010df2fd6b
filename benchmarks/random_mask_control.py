"""Random-architecture control: is a searched ODBB better than a random one of its branch count?

For each seed, draws a uniformly random ``k``-subset of the host's candidate branches (the
random phase's draw: ``trainables.search.gates.random_mask``; a layer without identity that drew
nothing keeps ``kxk``, as the search's fallback does), writes it as an architecture JSON and
trains it as a fixed architecture with ``python -m trainables.cli`` (no Ray) for the sweep
file's full schedule. Prints fused test and validation accuracy per seed and their mean;
writes the masks and results.json to ``--out`` (the runs under ``--out/runs``).

    python benchmarks/random_mask_control.py configs/fashion_mnist_deep.yaml --budget 48 \\
        --seeds 0 1 2 --set optim.lr=0.1 --out benchmarks/results/random_mask_control
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from searchspace import Architecture, LayerArch, odbb_layers
from trainables import TrialConfig, load_trial_section, parse_override
from trainables.run.build import build_trial_model
from trainables.run.data import build_data
from trainables.search.gates import random_mask


def random_architecture(cfg: TrialConfig, budget: int, seed: int) -> Architecture:
    """A uniformly random ``budget``-branch architecture of ``cfg``'s host (all candidates)."""
    data = build_data(cfg.data, cfg.seed)
    search = {**cfg.to_dict()["search"], "method": "odbb", "budget": budget}
    host = build_trial_model(TrialConfig.from_dict({**cfg.to_dict(), "search": search}), data.num_classes,
                             data.in_channels)
    layers = odbb_layers(host)
    sizes = [len(block.branch_names) for _, block in layers]
    mask = random_mask(sum(sizes), budget, torch.Generator().manual_seed(seed)).tolist()
    arch, offset = [], 0
    for (name, block), size in zip(layers, sizes):
        kept = [b for b, on in zip(block.branch_names, mask[offset:offset + size]) if on]
        offset += size
        if not kept and not block.has_identity:
            kept = ["kxk"]  # the search's fallback for a layer that would output nothing
        arch.append(LayerArch(name, kept, block.has_identity))
    return Architecture(model=cfg.model.name, num_classes=data.num_classes, in_channels=data.in_channels,
                        options=dict(cfg.model.options), layers=arch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep YAML file; its trial: section is trained")
    parser.add_argument("--budget", type=int, required=True, help="branches to draw (k)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask and training seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trial key override")
    parser.add_argument("--out", type=Path, required=True, help="folder for the masks and the runs")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        overrides = {**dict(parse_override(s) for s in args.set), "seed": seed}
        cfg = TrialConfig.from_overrides(load_trial_section(args.sweep), overrides)
        arch = random_architecture(cfg, args.budget, seed)
        path = (args.out / f"k{args.budget}_seed{seed}.json").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        arch.save(path)
        run = args.out / "runs" / f"k{args.budget}_seed{seed}"  # checkpoints and exports (git-ignored)
        cmd = [sys.executable, "-m", "trainables.cli", args.sweep, "--output", str(run), "--set", f"seed={seed}",
               "--set", f"search.method={path}", *(x for s in args.set for x in ("--set", s))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((run / "export" / "summary.json").read_text())
        final = summary["final"]
        rows.append({"seed": seed, "branches": arch.num_branches, "test_acc": final["test_acc"],
                     "val_acc": final["val_acc"], "fused_val_acc": final["fused_val_acc"],
                     "elapsed_s": summary["elapsed_s"]})
        print(json.dumps(rows[-1]), flush=True)
    tests = [r["test_acc"] for r in rows]
    spread = f" ± {statistics.stdev(tests):.4f}" if len(tests) > 1 else ""
    print(f"random k={args.budget}: test_acc {statistics.fmean(tests):.4f}{spread} over seeds {args.seeds}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
