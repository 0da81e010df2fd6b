"""Training-step cost of converted models: the "online step x plain" column of the coverage tables.

For each converting row of a ``convert_coverage.py`` JSON (whole-model rows; the pair-by-pair
giants are not timed), at the row's input size: one training step (SGD, cross-entropy, batch 8,
float32, random weights) of the online supernet with every branch active, over the same step of
the original model, both built in this process and timed side by side, interleaved (plain,
online, plain, online), median of ``--steps`` steps per round after two warm-up steps, the
faster round of each. The rows are updated in place (``step_plain_s``, ``step_online_s``,
``online_x_plain``), so the JSON and its table (``--markdown``) stay one record.

    python benchmarks/convert_step_cost.py --json benchmarks/results/convert/convert_coverage_timm.json
        [--builders test_efficientnet ...] [--steps 3] [--threads 1] [--markdown out.md]

Run it on a quiet machine: it is a timing, and two cores shared with anything else skew it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROUNDS = 2
BATCH = 8


def _coverage() -> ModuleType:
    """``convert_coverage.py`` beside this file (its model constructors and table)."""
    spec = importlib.util.spec_from_file_location("convert_coverage", Path(__file__).with_name("convert_coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_time(model: Any, x: Any, steps: int) -> float:
    """Median seconds of one SGD training step (cross-entropy on 10 classes), after two warm-up steps."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.arange(x.shape[0]) % 10
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, target).backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def online_x_plain(build: Any, size: int, steps: int) -> dict[str, float]:
    """The plain model's and the online supernet's step time, and their ratio."""
    import torch

    from searchspace import convert

    torch.manual_seed(0)
    plain = build()
    online = convert(build(), reparam="online")
    batch = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(4))
    times: dict[str, list[float]] = {"plain": [], "online": []}
    for _ in range(ROUNDS):  # interleaved, so a load change hits both alike
        times["plain"].append(step_time(plain, batch, steps))
        times["online"].append(step_time(online, batch, steps))
    plain_s, online_s = min(times["plain"]), min(times["online"])
    return {"step_plain_s": plain_s, "step_online_s": online_s, "online_x_plain": online_s / plain_s}


def _timed(row: dict[str, Any]) -> bool:
    return bool(row.get("converted")) and "input" in row and "error" not in row and not row.get("checked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="a convert_coverage.py JSON; its rows are updated in place")
    parser.add_argument("--builders", nargs="+", help="only these rows (default: every converting whole-model row)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", help="write the updated table here")
    args = parser.parse_args()
    import warnings

    import torch

    warnings.simplefilter("ignore")  # model init notices
    torch.set_num_threads(args.threads)
    coverage = _coverage()
    path = Path(args.json)
    record = json.loads(path.read_text())
    library = record.get("library") or ("timm" if "timm" in record else "torchvision")  # older files: no "library"
    record["step_timing"] = {"threads": args.threads, "steps": args.steps, "rounds": ROUNDS, "batch": BATCH,
                             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for row in record["rows"]:
        if not _timed(row) or (args.builders and row["builder"] not in args.builders):
            continue
        try:
            row.update(online_x_plain(coverage._constructor(library, row["builder"]), row["input"], args.steps))
        except Exception as err:  # noqa: BLE001 - a model that does not train at this size says why
            row["step_error"] = f"{type(err).__name__}: {err}"[:300]
        gc.collect()
        print(json.dumps({k: row.get(k) for k in ("builder", "online_x_plain", "step_error") if k in row}), flush=True)
        path.write_text(json.dumps(record, indent=1))  # after every model: an interrupted run keeps its rows
    if args.markdown:
        Path(args.markdown).write_text(coverage.markdown(record["rows"]) + "\n")


if __name__ == "__main__":
    main()
