"""Alpha as something a person can read: a layers x branch-types table (JSON) and a heatmap (PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from searchspace import BRANCH_TYPES, ODBB

__all__ = ["alpha_table", "save_alpha", "plot_alpha"]


def alpha_table(layers: list[tuple[str, ODBB]], alpha: torch.Tensor | None, mask: torch.Tensor) -> dict[str, Any]:
    """``{"branch_types", "layers", "alpha", "kept", "identity"}``; missing slots are null.

    ``alpha`` and ``mask`` are flat over the candidates that exist (layer by layer); with
    no alpha (a fixed architecture) the alpha rows are all null.
    """
    values = alpha.detach().cpu().tolist() if alpha is not None else None
    kept_flat = mask.cpu().tolist()
    rows_alpha, rows_kept, offset = [], [], 0
    for _, block in layers:
        row_a: list[float | None] = [None] * len(BRANCH_TYPES)
        row_k: list[bool | None] = [None] * len(BRANCH_TYPES)
        for i, name in enumerate(block.branch_names):
            column = BRANCH_TYPES.index(name)
            row_a[column] = None if values is None else float(values[offset + i])
            row_k[column] = bool(kept_flat[offset + i])
        offset += len(block.branch_names)
        rows_alpha.append(row_a)
        rows_kept.append(row_k)
    return {
        "branch_types": list(BRANCH_TYPES),
        "layers": [name for name, _ in layers],
        "identity": [block.has_identity for _, block in layers],
        "alpha": rows_alpha,
        "kept": rows_kept,
    }


def save_alpha(table: dict[str, Any], path: Path) -> None:
    """Write the table as JSON (atomically: readers never see half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)


def plot_alpha(table: dict[str, Any], path: Path, title: str = "alpha (kept branches marked)") -> None:
    """Heatmap of alpha, layers down and branch types across; kept branches marked with a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[math.nan if v is None else v for v in row] for row in table["alpha"]]
    n_layers, n_types = len(rows), len(table["branch_types"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n_types, 1.0 + 0.32 * max(n_layers, 1)))
    image = ax.imshow(torch.tensor(rows, dtype=torch.float32).numpy(), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.05)
    for r, row in enumerate(table["kept"]):
        for c, kept in enumerate(row):
            if kept:
                ax.plot(c, r, marker="o", color="red", markersize=5)
            elif kept is None:
                ax.text(c, r, "-", ha="center", va="center", color="gray")
    ax.set_xticks(range(n_types), table["branch_types"], rotation=30)
    labels = [f"{name}{' +id' if ident else ''}" for name, ident in zip(table["layers"], table["identity"])]
    ax.set_yticks(range(n_layers), labels, fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
