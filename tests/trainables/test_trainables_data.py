"""Datasets: disjoint seeded splits, limit_train, and the flat (Debian) Fashion-MNIST layout."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from trainables.config.sections import DataConfig
from trainables.run.data import build_data


def _indices(subset) -> set[int]:
    return set(subset.indices)


def test_digits_split_is_disjoint_seeded_and_capped() -> None:
    a, b = build_data(DataConfig(val_fraction=0.25), 0), build_data(DataConfig(val_fraction=0.25), 0)
    assert not _indices(a.train) & _indices(a.val)
    assert len(a.train) + len(a.val) == 1797 and len(a.val) == round(1797 * 0.25)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert build_data(DataConfig(), 1).val.indices != build_data(DataConfig(), 0).val.indices
    capped = build_data(DataConfig(limit_train=100), 0)
    assert len(capped.train) == 100 and capped.val.indices == build_data(DataConfig(), 0).val.indices
    assert (a.num_classes, a.in_channels, a.example_shape, a.test) == (10, 1, (1, 8, 8), None)


def _idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in dims) + payload)


def test_flat_gzipped_mnist_layout_is_prepared_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPNAS_DATA_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    for split, n in (("train", 20), ("t10k", 6)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", 2051, (n, 28, 28), bytes(range(256)) * (n * 784 // 256) + bytes(n * 784 % 256))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", 2049, (n,), bytes(i % 10 for i in range(n)))
    data = build_data(DataConfig(dataset="fashion_mnist", root=str(root), val_fraction=0.25), 0)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 6)
    assert data.example_shape == (1, 28, 28) and data.num_classes == 10
    assert (tmp_path / "cache").is_dir()


def test_decoded_tensors_normalised_once_augmented_per_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from trainables.run.data import TensorImages

    monkeypatch.setenv("REPNAS_DATA_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    pixels = bytes((7 * i) % 256 for i in range(40 * 784))
    for split in ("train", "t10k"):
        _idx(root / f"{split}-images-idx3-ubyte.gz", 2051, (40, 28, 28), pixels)
        _idx(root / f"{split}-labels-idx1-ubyte.gz", 2049, (40,), bytes(i % 10 for i in range(40)))
    plain = build_data(DataConfig(dataset="fashion_mnist", root=str(root), val_fraction=0.25), 0)
    full = plain.train.dataset
    assert isinstance(full, TensorImages) and full.images is plain.val.dataset.images  # one copy
    raw = torch.tensor(list(pixels), dtype=torch.float32).view(40, 1, 28, 28) / 255
    torch.testing.assert_close(full.images, (raw - 0.2860) / 0.3530)  # torchvision's ToTensor + Normalize
    assert plain.train[0][0].shape == (1, 28, 28) and plain.train[0][1] == plain.train.dataset.targets[plain.train.indices[0]]
    torch.testing.assert_close(plain.test.images, full.images)  # same bytes in the test files here
    augmented = build_data(DataConfig(dataset="fashion_mnist", root=str(root), val_fraction=0.25, augment=True), 0)
    assert augmented.train.dataset.augment is not None and augmented.val.dataset.augment is None
    torch.manual_seed(0)
    crops = torch.stack([augmented.train[0][0] for _ in range(8)])
    assert crops.shape == (8, 1, 28, 28) and not all(torch.equal(crops[0], c) for c in crops[1:])
    resized = build_data(DataConfig(dataset="fashion_mnist", root=str(root), image_size=14), 0)
    assert resized.example_shape == (1, 14, 14)


def test_peak_memory_window_excludes_freed_memory_of_a_previous_trial() -> None:
    import sys

    import torch

    from trainables.run.memory import PeakMemory

    if not sys.platform.startswith("linux"):
        pytest.skip("RSS high-water mark reset is Linux-only")
    memory = PeakMemory(torch.device("cpu"))
    before = memory.peak_mb()
    small = [torch.ones(64, 64) for _ in range(8192)]  # 128 MiB in heap (not mmap) chunks
    assert memory.peak_mb() > before + 100
    del small
    memory.reset()  # the next trial's window: the freed heap is trimmed, not counted
    assert memory.peak_mb() < before + 40


def test_the_dataset_registry_describes_the_data_it_names() -> None:
    """``trainables.config.datasets`` is the one table of dataset facts; digits (the one set every
    machine has) as read agrees with it: classes, channels, side, training images, no test split."""
    from trainables.config.datasets import DATASETS, dataset_info

    info = dataset_info("digits")
    bundle = build_data(DataConfig(dataset="digits", val_fraction=0.2), seed=0)
    assert bundle.num_classes == info.classes and bundle.in_channels == info.channels
    assert bundle.example_shape == (info.channels, info.size, info.size)
    assert len(bundle.train) + len(bundle.val) == info.train_images and bundle.test is None and info.test_images == 0
    for name in DATASETS:  # every entry is complete where the data is known before reading it
        entry = dataset_info(name)
        assert (entry.mean is None) == (entry.std is None) == (name == "imagefolder")
        assert entry.mean is None or len(entry.mean) == entry.channels
