"""DDP inside one trial: two gloo workers on CPU through Ray Train (real processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from searchspace import build_model, reparameterize
from trainables import TrialConfig, apply_overrides
from trainables.ray_tune.distributed import TRACE_FILE, ShardSampler, WorkerResources, convert_sync_bn, run_distributed

ray = pytest.importorskip("ray")


def test_shard_sampler_covers_each_global_batch_once() -> None:
    """Ranks' slices of every global batch are disjoint; together they are the batch."""
    samplers = [ShardSampler(103, 8, 2, rank, seed=0) for rank in range(2)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert len(parts[0]) == len(parts[1]) == 12 * 4
        assert not set(parts[0]) & set(parts[1])
        assert len(set(parts[0]) | set(parts[1])) == 96
    samplers[0].set_epoch(0)
    first = list(samplers[0])
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != first  # reshuffled per epoch


@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_sync_bn_conversion_keeps_classes_and_fusion(reparam: str) -> None:
    """Synchronised BNs keep their class (padding, fuse_kernel) and state_dict keys."""
    torch.manual_seed(0)
    model = build_model("repvgg_tiny", num_classes=10, in_channels=1, reparam=reparam).eval()
    x = torch.randn(2, 1, 8, 8)
    before, keys = model(x), set(model.state_dict())
    classes = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    convert_sync_bn(model)
    assert set(model.state_dict()) == keys
    converted = dict(model.named_modules())
    assert classes and all(isinstance(converted[name], cls) for name, cls in classes.items())
    assert all(type(converted[name]).__name__.startswith("Sync") or type(converted[name]).__name__ == "_SyncBN"
               for name in classes)
    torch.testing.assert_close(model(x), before)  # eval mode: plain BN arithmetic
    torch.testing.assert_close(reparameterize(model)(x), before, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("reparam, runtime", [("offline", {}), ("online", {}),
                                              ("offline", {"runtime.precision": "fp16", "runtime.compile": True})],
                         ids=["offline", "online", "offline-fp16-compile"])
def test_two_gloo_workers_agree_on_masks_and_alpha(tmp_path: Path, tiny_dict: dict[str, Any], reparam: str,
                                                   runtime: dict[str, Any]) -> None:
    """Every step both ranks use the same mask and alpha (though rank 1 draws its own),
    the weights agree, and the run ends with a fused, verified, exported model. fp16 with
    compile: both ranks skip the same overflowing steps (the all-reduced gradients decide),
    and the DDP model compiled for the fixed phase keeps them in step."""
    config = TrialConfig.from_dict(apply_overrides(tiny_dict, {"runtime.workers": 2, "model.reparam": reparam,
                                                               **runtime}))
    reports: list[tuple[dict[str, float], str]] = []

    def report(metrics: dict[str, float], checkpoint: Any) -> None:  # as Tune does: copy it out
        reports.append((metrics, checkpoint.to_directory(str(tmp_path / f"epoch{len(reports) + 1}"))))

    trace = tmp_path / "trace"
    trace.mkdir()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_distributed(config, report, workers=WorkerResources(cpus=1),
                        storage_path=str(tmp_path / "storage"), trial_name="ddp", trace_dir=trace)
    finally:
        ray.shutdown()
    assert [m["epoch"] for m, _ in reports] == [1.0, 2.0, 3.0]
    rows = [[json.loads(line) for line in (trace / TRACE_FILE.format(rank=r)).read_text().splitlines()] for r in (0, 1)]
    assert len(rows[0]) == len(rows[1]) > 3 * 8
    for a, b in zip(*rows):
        assert (a["step"], a["mask"], a["alpha"]) == (b["step"], b["mask"], b["alpha"])
    assert not any(r["own_draw_differs"] for r in rows[0])
    assert any(r["own_draw_differs"] for r in rows[1])  # agreement came from the broadcast
    assert len({r["alpha"] for r in rows[0]}) > 2  # alpha was learned (search phase)
    final, checkpoint = reports[-1]
    assert final["done"] == 1.0 and final["fused_max_logit_diff"] < 1e-3
    assert abs(final["fused_val_acc"] - final["val_acc"]) < 0.02
    local = Path(checkpoint)
    summary = json.loads((local / "export" / "summary.json").read_text())
    assert summary["final"]["epoch"] == 3.0 and (local / "export" / "fused_state_dict.pt").is_file()
    assert not (tmp_path / "storage").exists() or not any((tmp_path / "storage").iterdir())
