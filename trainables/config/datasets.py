"""The dataset registry: every fact the project knows about a dataset without reading it.

One table, read by the config checks (``trainables.config.sections``), the data pipeline
(``trainables.run.data``), the model checks (``trainables.run.build``, ``trainables.run.probe``)
and the dry run's data facts (``trainables.run.data_facts``). An image folder's facts come
from its folders (``trainables.run.imagefolder``): its entries here are None.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASET_INFO", "DATASETS", "dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset before it is read."""

    channels: int                              # channels of its images as stored
    size: int | None                           # side of its (square) images; None: the images' own
    classes: int | None                        # None: one per class folder
    train_images: int | None                   # images of its training split
    test_images: int                           # images of its test split (0: none, no test_acc)
    mean: tuple[float, ...] | None = None      # per-channel normalisation (the published statistics)
    std: tuple[float, ...] | None = None


DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1, 8, 10, 1797, 0, (0.3055,), (0.3775,)),
    "mnist": DatasetInfo(1, 28, 10, 60000, 10000, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(1, 28, 10, 60000, 10000, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(3, 32, 10, 50000, 10000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(3, 32, 100, 50000, 10000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": DatasetInfo(3, None, None, None, 0),
}
"""Every dataset ``trial.data.dataset`` accepts."""

DATASETS: tuple[str, ...] = tuple(DATASET_INFO)
"""The names ``trial.data.dataset`` accepts."""


def dataset_info(name: str) -> DatasetInfo:
    """The registry's entry of dataset ``name`` (a name ``trial.data`` validated)."""
    return DATASET_INFO[name]
