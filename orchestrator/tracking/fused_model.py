"""Find a trial's export files and log its fused model to MLflow (runs inside the trial)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .. import mlflow_adapter
from .parent_run import fluent_tracking_uri

__all__ = ["artifact_files", "load_fused", "log_fused_model"]

log = logging.getLogger(__name__)
ARTIFACTS: tuple[str, ...] = ("architecture.json", "alpha.json", "alpha.png")


def artifact_files(export_dir: Path) -> list[Path]:
    """Architecture JSON and the alpha table / picture (in the export folder or next to it)."""
    found = []
    for name in ARTIFACTS:
        for folder in (export_dir, export_dir.parent):
            if (folder / name).is_file():
                found.append(folder / name)
                break
    return found


def _example(export_dir: Path) -> torch.Tensor:
    """An input example (a batch of 2) of the shape the trial recorded in ``summary.json``; a
    trial exported before the shape was recorded: ``model.pt2``'s own example (a slower load)."""
    summary = export_dir / "summary.json"
    shape = json.loads(summary.read_text()).get("input_shape") if summary.is_file() else None
    if shape:
        return torch.zeros(2, *shape)
    (example,) = torch.export.load(export_dir / "model.pt2").example_inputs[0]
    return example


def load_fused(export_dir: Path) -> tuple[torch.nn.Module, np.ndarray]:
    """The fused model as an ``nn.Module`` (rebuilt from ``architecture.json`` +
    ``fused_state_dict.pt``, a weights-only load; else ``model.pt2``'s module) and an input example."""
    from searchspace import Architecture, build_from_architecture, reparameterize

    state_path = export_dir / "fused_state_dict.pt"
    arch_path = export_dir / "architecture.json"
    if state_path.is_file() and arch_path.is_file():
        model = reparameterize(build_from_architecture(Architecture.load(arch_path)))
        model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    else:
        model = torch.export.load(export_dir / "model.pt2").module()
    model = model.cpu().eval()
    return model, _example(export_dir).detach().cpu().numpy().astype(np.float32)


def log_fused_model(tracking_uri: str, run_id: str, export_dir: Path, name: str, step: int) -> str:
    """``mlflow.pytorch.log_model(name=..., input_example=...)`` into ``run_id``; returns the
    model URI. Saved as torch.export (pt2) on every supported MLflow; pickle if that fails."""
    import mlflow
    import mlflow.pytorch

    model, example = load_fused(export_dir)
    # explicit requirements: MLflow's inference re-imports the model in a subprocess (~7 s); the
    # trial has checked the fused model against its supernet, MLflow's own check reloads it
    kwargs = {"name": name, "input_example": example, "step": step, "pip_requirements": _requirements()}
    with fluent_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        try:
            info = mlflow.pytorch.log_model(model, **kwargs, **mlflow_adapter.pytorch_log_kwargs("pt2"))
        except Exception as err:  # noqa: BLE001 - pt2 export can fail for exotic graphs
            log.warning("pt2 serialization of the fused model failed (%s); logging it as pickle", err)
            info = mlflow.pytorch.log_model(model, **kwargs, **mlflow_adapter.pytorch_log_kwargs("pickle"))
    return info.model_uri


def _requirements() -> list[str]:
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
