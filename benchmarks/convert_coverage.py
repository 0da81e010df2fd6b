"""Coverage of ``searchspace.convert`` over every torchvision classification builder, timm, or
third-party CNN libraries nobody here wrote.

For each name of ``torchvision.models.list_models(module=torchvision.models)`` (``--library
timm``: one model per timm architecture family, i.e. per module of ``timm.list_modules()``,
the one with the fewest parameters; ``pretrainedmodels``: every name of its ``model_names``;
``efficientnet_pytorch``: EfficientNet-B0; ``pytorchcv``: every name, with its own heads, and
``--count-only`` is meant for it), in a subprocess of its own (``num_classes=10``, random
weights, BN statistics set far from identity):

* convs in the model, how many convert, the skipped ones by reason (``find_pairs``);
* function preservation, float64: max |original - converted| over the offline and online
  forms, in eval mode and in train mode (then eval again: the running statistics moved alike);
* fused vs supernet, float64: every branch given random BN affine parameters and (online)
  scales, a random half of the branches active, the running statistics estimated on a batch
  of random inputs (so activations stay near unit scale, as in a trained network), then
  ``to_original``; the fused state dict loaded with ``strict=True`` into a fresh instance of
  the builder, and max |supernet - fused| in eval mode per converted layer (the fresh model's
  conv and BN against the supernet's block, on the input that block received) and at the
  model's output, beside a rounding control: how far the supernet's output moves when every
  converted block's output is scaled by 1 + 1e-15 (a deep random network amplifies float64
  rounding; the output error is of that order);

Errors are relative to max(1, max |reference|). The table's "online step x plain" column comes
from ``convert_step_cost.py``, which times the rows of this script's JSON on a quiet machine.

The input is the smallest of 32, 64, 96, 128, 224, 256, 299, 331 pixels the original accepts (in eval
and train mode). Models above ``--whole-model-limit`` parameters (RegNetY-128GF) are checked pair by pair: every
converted pair in float64 on its own (as its conv -> BN in a Sequential), the whole model's
state-dict keys and shapes (what a strict load checks) from a conversion with ``kxk`` only.

    python benchmarks/convert_coverage.py [--library torchvision|timm|pretrainedmodels|efficientnet_pytorch|pytorchcv]
        [--builders resnet18 ...] [--count-only]
        [--threads 1] [--jobs 1] [--json benchmarks/results/convert_coverage.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # the sibling module below, also when loaded by path
from convert_checks import FORMS, fused_error, input_size, preservation, randomize

LIBRARIES = ("torchvision", "timm", "pretrainedmodels", "efficientnet_pytorch", "pytorchcv")


def _constructor(library: str, name: str) -> Any:
    """A function that builds the model ``name`` of ``library`` with 10 classes, random weights."""
    if library == "timm":
        import timm

        return lambda: timm.create_model(name, pretrained=False, num_classes=10)
    if library == "pretrainedmodels":
        import pretrainedmodels

        return lambda: pretrainedmodels.__dict__[name](num_classes=10, pretrained=None)
    if library == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet

        return lambda: EfficientNet.from_name(name, num_classes=10)
    if library == "pytorchcv":  # its own heads: segmentation and detection models take no num_classes
        from pytorchcv.model_provider import get_model

        return lambda: get_model(name, pretrained=False)
    import torchvision

    return lambda: torchvision.models.get_model(name, num_classes=10)


def timm_families() -> list[str]:
    """One timm model per architecture family (module of ``timm.list_modules()``): the one with
    the fewest parameters (counted on the meta device)."""
    import timm
    import torch

    chosen = []
    for module in timm.list_modules():
        best: tuple[int, str] | None = None
        for name in timm.list_models(module=module):
            try:
                with torch.device("meta"):
                    params = sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters())
            except Exception:  # noqa: BLE001, S112 - a model that does not build on meta is left out
                continue
            best = min(best, (params, name)) if best else (params, name)
        if best:
            chosen.append(best[1])
    return chosen


def _whole_model(name: str, row: dict[str, Any], library: str) -> None:
    import torch

    from searchspace import convert

    make = _constructor(library, name)

    def build() -> Any:
        torch.manual_seed(0)
        return make()

    original = build()
    size = row["input"] = input_size(original)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    original = original.double()
    randomize(original, 2)
    errors: dict[str, float] = {}
    for reparam in FORMS:
        reference = copy.deepcopy(original)
        converted = convert(reference, reparam=reparam)
        errors[f"{reparam}_eval"], errors[f"{reparam}_train"] = preservation(reference, converted, x)
        del reference
        (errors[f"{reparam}_fused"], errors[f"{reparam}_fused_output"],
         errors[f"{reparam}_rounding_control"]) = fused_error(build, converted, x, 3)
        del converted
    row["preserve_eval"] = max(errors[f"{r}_eval"] for r in FORMS)
    row["preserve_train"] = max(errors[f"{r}_train"] for r in FORMS)
    row["fused"] = max(errors[f"{r}_fused"] for r in FORMS)
    row["fused_output"] = max(errors[f"{r}_fused_output"] for r in FORMS)
    row["rounding_control"] = max(errors[f"{r}_rounding_control"] for r in FORMS)
    row["strict_load"] = True
    row["errors"] = errors


def _pair_by_pair(row: dict[str, Any], model: Any, pairs: list[tuple[str, str]]) -> None:
    """Float64 checks of every converted pair on its own; the whole model's state-dict keys and shapes."""
    import torch
    from torch import nn

    from searchspace import convert, original_state_shapes

    worst = {"preserve_eval": 0.0, "preserve_train": 0.0, "fused": 0.0}
    for i, (conv, bn) in enumerate(pairs):
        pair = nn.Sequential(copy.deepcopy(model.get_submodule(conv)), copy.deepcopy(model.get_submodule(bn))).double()
        randomize(pair, 10 + i)
        x = torch.randn(2, pair[0].in_channels, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for reparam in FORMS:
            reference = copy.deepcopy(pair)
            converted = convert(reference, reparam=reparam)
            e, t = preservation(reference, converted, x)
            worst["preserve_eval"], worst["preserve_train"] = max(worst["preserve_eval"], e), max(worst["preserve_train"], t)
            worst["fused"] = max(worst["fused"], *fused_error(lambda p=pair: copy.deepcopy(p), converted, x, 20 + i)[:2])
    row.update(worst)
    # what strict loading checks, the same keys and shapes (kxk-only blocks: no memory for other branches)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    row["strict_load"] = original_state_shapes(convert(model, branches=("kxk",), preserve=False)) == expected
    row["checked"] = "pair by pair"


def _plan(name: str, library: str) -> tuple[dict[str, Any], Any, Any]:
    """(row with the conv counts and skip reasons, the model (meta device where it builds there), its pairs)."""
    import torch

    from searchspace import find_pairs

    build = _constructor(library, name)
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - builders that compute with tensors (RegNet) build on the CPU
        model = build()
    plan = find_pairs(model)
    reasons: dict[str, int] = {}
    for skipped in plan.skipped:
        reasons[skipped.reason] = reasons.get(skipped.reason, 0) + 1
    params = sum(p.numel() for p in model.parameters())
    row = {"builder": name, "convs": plan.num_convs, "converted": len(plan.pairs), "skipped": reasons, "params": params}
    return row, model, plan


def _worker(name: str, whole_model_limit: float, library: str = "torchvision") -> dict[str, Any]:
    row, model, plan = _plan(name, library)
    if not plan.pairs:
        return row
    if row["params"] > whole_model_limit:
        if next(model.parameters()).is_meta:
            model = _constructor(library, name)()
        _pair_by_pair(row, model, plan.pairs)
    else:
        del model
        _whole_model(name, row, library)
    return row


def _counted(name: str, library: str) -> dict[str, Any] | None:
    """The row of a model with nothing to convert, counted in this process (no subprocess to
    start); None when it has pairs (or does not build here: its subprocess reports why)."""
    try:
        row, _, plan = _plan(name, library)
    except Exception:  # noqa: BLE001 - the worker's run reports the error
        return None
    return None if plan.pairs else row


def _fmt(value: float | None) -> str:
    return "" if value is None else ("0" if value == 0 else f"{value:.0e}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The coverage table (one row per builder)."""
    lines = [("| builder | convs | converted | skipped (reason: count) | input | preservation eval / train | "
              "fused vs supernet: per layer / output (rounding control) | strict load | online step x plain |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        skipped = ", ".join(f"{k}: {v}" for k, v in r.get("skipped", {}).items()) or "-"
        if "error" in r:
            lines.append(f"| {r['builder']} | {r.get('convs', '')} | | {skipped} | | error: {r['error']} | | | |")
            continue
        if not r["converted"]:
            lines.append(f"| {r['builder']} | {r['convs']} | 0 | {skipped} | | nothing to convert | | | |")
            continue
        if "preserve_eval" not in r:  # --count-only
            lines.append(f"| {r['builder']} | {r['convs']} | {r['converted']} | {skipped} | | counted only | | | |")
            continue
        checked = " (pair by pair)" if r.get("checked") else ""
        control = f" ({_fmt(r['rounding_control'])})" if "rounding_control" in r else ""
        ratio = f"{r['online_x_plain']:.2f}" if "online_x_plain" in r else ("failed" if "step_error" in r else "not timed")
        lines.append(
            f"| {r['builder']} | {r['convs']} | {r['converted']} | {skipped} | {r.get('input', '')} | "
            f"{_fmt(r['preserve_eval'])} / {_fmt(r['preserve_train'])}{checked} | "
            f"{_fmt(r['fused'])} / {_fmt(r.get('fused_output')) or 'n/a'}{control} | "
            f"{'yes' if r['strict_load'] else 'no'} | {ratio} |")
    return "\n".join(lines)


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
           "--whole-model-limit", str(args.whole_model_limit), "--library", args.library]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"builder": name, "error": f"timed out after {args.timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"builder": name, "error": last[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=LIBRARIES, default="torchvision")
    parser.add_argument("--builders", nargs="+",
                        help="model names of the library (default: every torchvision builder; timm: one per family; "
                             "pretrainedmodels: every name; efficientnet_pytorch: efficientnet-b0)")
    parser.add_argument("--count-only", action="store_true",
                        help="convs, pairs and skip reasons only (no float64 checks): for libraries of hundreds of models")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at once (each in its own process)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--whole-model-limit", type=float, default=150e6,
                        help="parameters above which a model is checked pair by pair")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per builder")
    parser.add_argument("--json", help="write the rows here (after every builder)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import warnings

        import torch

        warnings.simplefilter("ignore")  # GoogLeNet / Inception init notices
        torch.set_num_threads(args.threads)
        print(json.dumps(_worker(args.worker, args.whole_model_limit, args.library)))
        return
    import warnings

    warnings.simplefilter("ignore")  # model init notices
    library = __import__(args.library)
    if args.builders:
        names = args.builders
    elif args.library == "timm":
        names = timm_families()
    elif args.library == "pretrainedmodels":
        names = list(library.model_names)
    elif args.library == "efficientnet_pytorch":
        names = ["efficientnet-b0"]
    elif args.library == "pytorchcv":
        names = sorted(__import__("pytorchcv.model_provider").model_provider._models)
    else:
        names = library.models.list_models(module=library.models)
    header = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "torch": __import__("torch").__version__, args.library: library.__version__, "library": args.library}
    rows: list[dict[str, Any]] = []

    def run(name: str) -> dict[str, Any]:
        start = time.perf_counter()
        row = _run(name, args)
        row["seconds"] = round(time.perf_counter() - start, 1)
        return row

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**header, "rows": rows}, f, indent=1)

    converting = []
    for name in names if args.count_only else ():  # pairs and reasons only, every model in this process
        try:
            record(_plan(name, args.library)[0])
        except Exception as err:  # noqa: BLE001 - a model that does not build here says why
            record({"builder": name, "error": f"does not build: {type(err).__name__}: {err}"[:300]})
    for name in () if args.count_only else names:  # one at a time: torch.fx patches torch while it traces
        counted = _counted(name, args.library)
        if counted is None:
            converting.append(name)
        else:
            record(counted)
    with ThreadPoolExecutor(args.jobs) as pool:
        for done in as_completed([pool.submit(run, name) for name in converting]):
            record(done.result())
    rows.sort(key=lambda r: names.index(r["builder"]))
    table = markdown(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
