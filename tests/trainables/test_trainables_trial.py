"""run_trial end to end: bit-exact resume, checkpoint integrity, fused == supernet, exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _metrics import computed
import torch

from searchspace import Architecture, build_from_architecture, odbb_layers, reparameterize
from trainables import EPOCH_METRICS, FINAL_METRICS, CheckpointError, SearchEngine, TrialHook, load_checkpoint, run_trial
from trainables.run.build import build_trial_model
from trainables.run.data import build_data, make_loader



class _CountingHook(TrialHook):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.ended = False

    def on_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.epochs.append(epoch)

    def on_end(self, metrics: dict[str, float], export_dir: Path) -> None:
        self.ended = True

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])



@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_resume_from_middle_checkpoint_is_bit_identical(tmp_path: Path, tiny, reparam: str) -> None:
    cfg = tiny(**{"search.epochs": 4, "search.random_epochs": 1, "search.search_epochs": 1, "model.reparam": reparam})
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], checkpoint: Path) -> None:
        saved[int(metrics["epoch"])] = Path(shutil.copytree(checkpoint, tmp_path / f"ckpt{int(metrics['epoch'])}"))

    hook = _CountingHook()
    full = run_trial(cfg, tmp_path / "full", hooks=[hook], report=keep)
    assert hook.epochs == [1, 2, 3, 4] and hook.ended
    assert set(EPOCH_METRICS) | set(FINAL_METRICS) <= set(full.metrics)
    for epoch in (1, 2):  # resume in the search phase and across the fix
        resumed_hook = _CountingHook()
        resumed = run_trial(cfg, tmp_path / f"resumed{epoch}", hooks=[resumed_hook], resume_from=saved[epoch])
        assert resumed_hook.epochs == list(range(1, 5))  # hook state came back from the checkpoint
        assert [computed(m) for m in resumed.history] == [computed(m) for m in full.history]
        a, _ = load_checkpoint(full.checkpoint_dir)
        b, _ = load_checkpoint(resumed.checkpoint_dir)
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["alpha"], b["alpha"]) and torch.equal(a["fixed_mask"], b["fixed_mask"])


def test_same_seed_same_run_different_seed_different_run(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"search.epochs": 1, "search.random_epochs": 1, "search.search_epochs": 0, "data.limit_train": 128})
    a, b = (run_trial(cfg, tmp_path / name).history for name in ("a", "b"))
    c = run_trial(tiny(**{"seed": 1, "search.epochs": 1, "search.random_epochs": 1, "search.search_epochs": 0,
                          "data.limit_train": 128}), tmp_path / "c").history
    assert [computed(m) for m in a] == [computed(m) for m in b] != [computed(m) for m in c]


def test_the_architecture_is_finalized_once_at_the_end(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    finalized: list[int] = []

    class _Spy(SearchEngine):  # the real engine, counting its finalize calls
        def finalize(self) -> None:
            finalized.append(self.epoch)
            super().finalize()

    monkeypatch.setattr("trainables.run.trial.SearchEngine", _Spy)
    result = run_trial(tiny(**{"search.epochs": 2, "search.random_epochs": 1, "search.search_epochs": 0}), tmp_path / "run")
    assert finalized == [2] and result.metrics["done"] == 1.0


def test_corrupt_checkpoint_is_reported_with_its_path(tmp_path: Path, tiny) -> None:
    result = run_trial(tiny(**{"search.epochs": 1, "search.random_epochs": 0, "search.search_epochs": 1}), tmp_path / "run")
    state = result.checkpoint_dir / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(state)):
        load_checkpoint(result.checkpoint_dir)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_fused_model_matches_supernet_and_exports_load_with_plain_torch(tmp_path: Path, tiny, reparam: str) -> None:
    cfg = tiny(**{"export.formats": ["state_dict", "torch_export", "torchscript", "onnx"], "model.reparam": reparam})
    result = run_trial(cfg, tmp_path / "run")
    m, out = result.metrics, result.export_dir
    assert m["done"] == 1.0 and m["fused_val_acc"] == m["val_acc"] and m["fused_max_logit_diff"] < 1e-4
    assert m["flops_fused"] > 0 and m["params_fused"] > 0 and m["latency_fused_ms"] > 0
    assert not result.summary["export_errors"]
    for name in ("architecture.json", "model.pt2", "model.ts", "fused_state_dict.pt", "alpha.json", "alpha.png", "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["done"] == 1.0
    # reference: rebuild from architecture.json + the supernet weights of the checkpoint, then fuse
    tensors, _ = load_checkpoint(result.checkpoint_dir)
    arch = Architecture.load(out / "architecture.json")
    assert arch.num_branches == m["branches_kept"]
    data = build_data(cfg.data, cfg.seed)
    inputs = next(iter(make_loader(data.val, 64, train=False)))[0]
    supernet = build_trial_model(cfg, data.num_classes, data.in_channels)
    supernet.load_state_dict(tensors["model"])  # its ``active`` buffers carry the mask
    assert all(block.reparam == reparam for _, block in odbb_layers(supernet))
    with torch.no_grad():
        expected = supernet.eval()(inputs)
        fused = reparameterize(supernet)
        assert float((fused(inputs) - expected).abs().max()) < 1e-4
        pt2 = torch.export.load(str(out / "model.pt2")).module()
        with pytest.warns(FutureWarning):  # torch.jit is deprecated but still loads
            ts = torch.jit.load(str(out / "model.ts"))
        rebuilt = reparameterize(build_from_architecture(arch))  # the deploy network is the same in both forms
        rebuilt.load_state_dict(torch.load(out / "fused_state_dict.pt", weights_only=True))
        for model in (pt2, ts, rebuilt.eval()):
            assert float((model(inputs) - expected).abs().max()) < 1e-4
        assert pt2(inputs[:1]).shape == (1, 10)  # dynamic batch
    if (out / "model.onnx").is_file():
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": inputs.numpy()})[0]
        assert np.abs(got - expected.numpy()).max() < 1e-4



def test_weights_accuracy_before_training_is_the_weights_own(tmp_path: Path, tiny) -> None:
    """With model.weights a trial reports the loaded model's accuracy before any step
    (weights_val_acc): the accuracy the weights' own fused model had, in every report and
    after a resume."""
    user = {"model.factory": "_factories:small_net", "data.channels": 3, "search.epochs": 1, "search.random_epochs": 0,
            "search.search_epochs": 0}
    first = run_trial(tiny(**user, **{"search.method": "plain"}), tmp_path / "user")
    assert "weights_val_acc" not in first.metrics
    weights = str(first.export_dir / "fused_state_dict.pt")
    cfg = tiny(**{**user, "model.weights": weights, "search.method": "dbb", "search.epochs": 2})
    tuned = run_trial(cfg, tmp_path / "tuned")
    assert [row["weights_val_acc"] for row in tuned.history] == [first.metrics["fused_val_acc"]] * 2
    resumed = run_trial(cfg, tmp_path / "resumed", resume_from=tmp_path / "tuned" / "checkpoint")
    assert resumed.metrics["weights_val_acc"] == first.metrics["fused_val_acc"]
