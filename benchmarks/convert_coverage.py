"""Coverage of ``searchspace.convert`` over every torchvision classification builder, or timm.

For each name of ``torchvision.models.list_models(module=torchvision.models)`` (``--library
timm``: one model per timm architecture family, i.e. per module of ``timm.list_modules()``,
the one with the fewest parameters), in a subprocess of its own (``num_classes=10``, random
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

Errors are relative to max(1, max |reference|).
* online step x plain: one training step (SGD, cross-entropy, batch 8, float32) of the online
  supernet with every branch active over the original model's, median of a few steps each,
  measured side by side in the same process.

The input is the smallest of 32, 64, 96, 128, 224, 256, 299 pixels the original accepts (in eval
and train mode). Models above ``--whole-model-limit`` parameters (RegNetY-128GF) are checked pair by pair: every
converted pair in float64 on its own (as its conv -> BN in a Sequential), the whole model's
state-dict keys and shapes (what a strict load checks) from a conversion with ``kxk`` only,
and no step timing.

    python benchmarks/convert_coverage.py [--library torchvision|timm] [--builders resnet18 ...]
        [--threads 1] [--jobs 1] [--json benchmarks/results/convert_coverage.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from typing import Any

SIZES = (32, 64, 96, 128, 224, 256, 299)
FORMS = ("offline", "online")


def _randomize(model: Any, seed: int) -> None:
    """BN statistics and affine parameters far from identity; online scales random."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
                c, opts = m.num_features, {"generator": g, "dtype": m.weight.dtype}
                m.weight.copy_(torch.rand(c, **opts) + 0.5)
                m.bias.copy_(0.5 * torch.randn(c, **opts))
                m.running_mean.copy_(0.5 * torch.randn(c, **opts))
                m.running_var.copy_(torch.rand(c, **opts) + 0.5)


def _random_masks(model: Any, seed: int) -> None:
    import torch

    from searchspace import odbb_layers

    g = torch.Generator().manual_seed(seed)
    for _, block in odbb_layers(model):
        mask = torch.rand(len(block.branch_names), generator=g) < 0.5
        if not mask.any() and block.identity is None:
            mask[torch.randint(len(mask), (1,), generator=g)] = True
        block.set_active(mask)


def _out(model: Any, x: Any, train: bool) -> Any:
    import torch

    model.train(train)
    torch.manual_seed(0)  # the same dropout masks in both models
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out  # GoogLeNet / Inception in train mode: (logits, aux...)


def _input_size(model: Any) -> int:
    """The smallest of ``SIZES`` the model runs on in eval and train mode (Inception's auxiliary
    head needs more than its main path)."""
    import torch

    for size in SIZES:
        try:
            for train in (False, True):
                _out(model, torch.randn(2, 3, size, size), train)
            return size
        except (RuntimeError, ValueError, AssertionError):
            continue
    raise RuntimeError(f"no input size of {SIZES} works")


def _error(reference: Any, other: Any) -> float:
    """max |reference - other| relative to max(1, max |reference|): deep networks with random
    multi-branch blocks reach outputs of 1e10 and more, where float64 rounding alone is 1e-6."""
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1.0))


def _preservation(original: Any, converted: Any, x: Any) -> tuple[float, float]:
    """(eval error, train error) of ``converted`` against ``original``; both keep training state."""
    eval_err = _error(_out(original, x, False), _out(converted, x, False))
    train_err = _error(_out(original, x, True), _out(converted, x, True))
    after = _error(_out(original, x, False), _out(converted, x, False))  # running stats moved alike
    return eval_err, max(train_err, after)


def _calibrate(model: Any, x: Any) -> None:
    """Running statistics that match the data (a cumulative average over one train-mode pass),
    so activations stay near unit scale as in a trained network."""
    import torch
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)


def _fused_error(build: Any, converted: Any, x: Any, seed: int) -> tuple[float, float, float]:
    """(per layer, at the output, control): max |supernet - fused| in eval mode, the fused model
    loaded strictly into a fresh instance. Per layer: each converted layer of the fresh model (its
    conv and BN) against the supernet's block and what stayed at the BN's place (timm's drop and
    act), on the input that block received. Control: how far
    the supernet's own output moves when every converted block's output is scaled by 1 + 1e-15
    (float64 rounding), i.e. what the network's depth makes of rounding alone."""
    import torch

    from searchspace import conversion_of, to_original

    _randomize(converted, seed)
    _random_masks(converted, seed)
    # 64 images at 32 pixels (the last maps are 1x1: fewer samples leave near-zero variances that
    # amplify rounding by 1/sqrt(eps) per layer), the same pixel count at larger sizes
    shape = (max(8, 64 * 32**2 // x.shape[-1] ** 2), *x.shape[1:])
    _calibrate(converted, torch.randn(shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed)))
    fresh = build().double()
    fresh.load_state_dict(to_original(converted).state_dict(), strict=True)
    seen: dict[str, tuple[Any, Any]] = {}  # cloned: an in-place activation follows the block
    layers = conversion_of(converted).layers
    hooks = [converted.get_submodule(layer.conv).register_forward_hook(
        lambda _m, inputs, out, name=layer.conv: seen.__setitem__(name, (inputs[0].clone(), out.clone())))
        for layer in layers]
    reference = _out(converted, x, False)
    output = _error(reference, _out(fresh, x, False))
    for hook in hooks:
        hook.remove()
    nudges = [converted.get_submodule(layer.conv).register_forward_hook(lambda _m, _i, out: out * (1 + 1e-15))
              for layer in layers]
    control = _error(reference, _out(converted, x, False))
    for hook in nudges:
        hook.remove()
    fresh.eval()
    worst = 0.0
    with torch.no_grad():
        for layer in layers:
            inputs, out = seen[layer.conv]
            after = converted.get_submodule(layer.bn)(out)  # a norm + act layer's tail (timm: drop, act)
            worst = max(worst, _error(after, fresh.get_submodule(layer.bn)(fresh.get_submodule(layer.conv)(inputs))))
    return worst, output, control


def _step_time(model: Any, x: Any, steps: int) -> float:
    """Median seconds of one SGD training step (cross-entropy on 10 classes)."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.arange(x.shape[0]) % 10
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, target).backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _constructor(library: str, name: str) -> Any:
    """A function that builds the model ``name`` of ``library`` with 10 classes, random weights."""
    if library == "timm":
        import timm

        return lambda: timm.create_model(name, pretrained=False, num_classes=10)
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
            except Exception:  # noqa: BLE001 - a model that does not build on meta is left out
                continue
            best = min(best, (params, name)) if best else (params, name)
        if best:
            chosen.append(best[1])
    return chosen


def _whole_model(name: str, row: dict[str, Any], steps: int, library: str) -> None:
    import torch

    from searchspace import convert

    make = _constructor(library, name)

    def build() -> Any:
        torch.manual_seed(0)
        return make()

    original = build()
    size = row["input"] = _input_size(original)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    original = original.double()
    _randomize(original, 2)
    errors: dict[str, float] = {}
    for reparam in FORMS:
        reference = copy.deepcopy(original)
        converted = convert(reference, reparam=reparam)
        errors[f"{reparam}_eval"], errors[f"{reparam}_train"] = _preservation(reference, converted, x)
        del reference
        (errors[f"{reparam}_fused"], errors[f"{reparam}_fused_output"],
         errors[f"{reparam}_rounding_control"]) = _fused_error(build, converted, x, 3)
        del converted
    row["preserve_eval"] = max(errors[f"{r}_eval"] for r in FORMS)
    row["preserve_train"] = max(errors[f"{r}_train"] for r in FORMS)
    row["fused"] = max(errors[f"{r}_fused"] for r in FORMS)
    row["fused_output"] = max(errors[f"{r}_fused_output"] for r in FORMS)
    row["rounding_control"] = max(errors[f"{r}_rounding_control"] for r in FORMS)
    row["strict_load"] = True
    row["errors"] = errors
    del original
    if steps:
        plain = build()
        online = convert(plain, reparam="online")
        batch = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(4))
        times = {"plain": [], "online": []}
        for _ in range(2):  # interleaved, so load on the machine hits both alike
            times["plain"].append(_step_time(plain, batch, steps))
            times["online"].append(_step_time(online, batch, steps))
        row["step_plain_s"] = min(times["plain"])
        row["step_online_s"] = min(times["online"])
        row["online_x_plain"] = row["step_online_s"] / row["step_plain_s"]


def _pair_by_pair(row: dict[str, Any], model: Any, pairs: list[tuple[str, str]]) -> None:
    """Float64 checks of every converted pair on its own; the whole model's state-dict keys and shapes."""
    import torch
    from torch import nn

    from searchspace import convert, original_state_shapes

    worst = {"preserve_eval": 0.0, "preserve_train": 0.0, "fused": 0.0}
    for i, (conv, bn) in enumerate(pairs):
        pair = nn.Sequential(copy.deepcopy(model.get_submodule(conv)), copy.deepcopy(model.get_submodule(bn))).double()
        _randomize(pair, 10 + i)
        x = torch.randn(2, pair[0].in_channels, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for reparam in FORMS:
            reference = copy.deepcopy(pair)
            converted = convert(reference, reparam=reparam)
            e, t = _preservation(reference, converted, x)
            worst["preserve_eval"], worst["preserve_train"] = max(worst["preserve_eval"], e), max(worst["preserve_train"], t)
            worst["fused"] = max(worst["fused"], *_fused_error(lambda: copy.deepcopy(pair), converted, x, 20 + i)[:2])
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


def _worker(name: str, steps: int, whole_model_limit: float, library: str = "torchvision") -> dict[str, Any]:
    row, model, plan = _plan(name, library)
    if not plan.pairs:
        return row
    if row["params"] > whole_model_limit:
        if next(model.parameters()).is_meta:
            model = _constructor(library, name)()
        _pair_by_pair(row, model, plan.pairs)
    else:
        del model
        _whole_model(name, row, steps, library)
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
    lines = ["| builder | convs | converted | skipped (reason: count) | input | preservation eval / train | "
             "fused vs supernet: per layer / output (rounding control) | strict load | online step x plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        skipped = ", ".join(f"{k}: {v}" for k, v in r.get("skipped", {}).items()) or "-"
        if "error" in r:
            lines.append(f"| {r['builder']} | {r.get('convs', '')} | | {skipped} | | error: {r['error']} | | | |")
            continue
        if not r["converted"]:
            lines.append(f"| {r['builder']} | {r['convs']} | 0 | {skipped} | | nothing to convert | | | |")
            continue
        checked = " (pair by pair)" if r.get("checked") else ""
        control = f" ({_fmt(r['rounding_control'])})" if "rounding_control" in r else ""
        ratio = f"{r['online_x_plain']:.2f}" if "online_x_plain" in r else "not timed"
        lines.append(
            f"| {r['builder']} | {r['convs']} | {r['converted']} | {skipped} | {r.get('input', '')} | "
            f"{_fmt(r['preserve_eval'])} / {_fmt(r['preserve_train'])}{checked} | "
            f"{_fmt(r['fused'])} / {_fmt(r.get('fused_output')) or 'n/a'}{control} | "
            f"{'yes' if r['strict_load'] else 'no'} | {ratio} |")
    return "\n".join(lines)


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads), "--steps", str(args.steps),
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
    parser.add_argument("--library", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--builders", nargs="+",
                        help="model names of the library (default: every torchvision builder; timm: one per family)")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at once (each in its own process)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model and round (0: no timing)")
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
        print(json.dumps(_worker(args.worker, args.steps, args.whole_model_limit, args.library)))
        return
    import warnings

    warnings.simplefilter("ignore")  # model init notices
    library = __import__(args.library)
    if args.builders:
        names = args.builders
    elif args.library == "timm":
        names = timm_families()
    else:
        names = library.models.list_models(module=library.models)
    header = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "torch": __import__("torch").__version__, args.library: library.__version__}
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
    for name in names:  # one at a time: torch.fx patches torch while it traces
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
