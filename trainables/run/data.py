"""Datasets through torchvision: build, split (train/val never overlap), load reproducibly.

The validation set is carved out of the training split by a seeded permutation (an image
folder's own ``val/`` is used instead when there is one, ``trainables.run.imagefolder``); the
dataset's own test split (when it has one) is kept apart for the final ``test_acc``.
Nothing downloads unless ``data.download`` is true; missing files raise a ``ConfigError``
on ``trial.data.root`` that names the path and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..config.datasets import dataset_info
from ..config.sections import DataConfig
from ..errors import ConfigError

if TYPE_CHECKING:  # torchvision is imported where a dataset needs it (~1.3 s; digits does not)
    from torchvision import datasets

__all__ = ["DataBundle", "build_data", "make_loader", "TensorImages", "FASHION_MNIST_ROOT", "cache_dir", "LoaderSettings",
           "auto_num_workers", "light_items", "split_indices"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_ROOT_PATH = "trial.data.root"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
Transform = Callable[[object], torch.Tensor]


@dataclass(frozen=True)
class DataBundle:
    """Train/val/test datasets and their shape facts."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    example_shape: tuple[int, int, int]  # C, H, W of one input
    train_eval: Dataset | None = None
    """The training images as evaluation sees them (no augmentation), in the split's fixed order:
    what INT8 calibration reads (``trainables.run.quantize``)."""


class TensorImages(Dataset):
    """Decoded images as one float tensor ``(N, C, H, W)`` with their targets.

    Small in-memory datasets (digits, MNIST, Fashion-MNIST, CIFAR) are decoded and
    normalised once, so an epoch does no per-item PIL work; only random augmentation
    (``augment``) runs per item. Train and eval views share the same tensor.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str],
                 augment: Transform | None = None) -> None:
        self.images, self.targets, self.classes, self.augment = images, targets, classes, augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.targets[index])


def _digits() -> TensorImages:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return TensorImages(images, torch.tensor(bunch.target, dtype=torch.long), [str(c) for c in range(10)])


def _decoded(dataset: datasets.VisionDataset) -> TensorImages:
    """A torchvision MNIST/CIFAR dataset (uint8 ``.data``) as a float tensor in [0, 1]."""
    data = torch.as_tensor(dataset.data)
    images = (data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)).float().div_(255.0)
    return TensorImages(images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long), list(dataset.classes))


def cache_dir() -> Path:
    """Where prepared dataset layouts go (``$REPNAS_DATA_CACHE`` or ``~/.cache/repnas-tune``)."""
    return Path(os.environ.get("REPNAS_DATA_CACHE", Path.home() / ".cache" / "repnas-tune"))


def _missing(path: Path, fix: str) -> ConfigError:
    return ConfigError(_ROOT_PATH, f"dataset files not found at {path}; {fix}")


def _mnist_root(root: Path, folder: str, download: bool, fix: str) -> Path:
    """A root whose ``<folder>/raw`` holds the four idx files, as torchvision expects.

    Accepts torchvision's own layout or a flat folder of the original (optionally
    gzipped) files, like Debian's ``dataset-fashion-mnist``; the latter is unpacked once
    into a cache folder, never downloaded.
    """
    if all((root / folder / "raw" / f).is_file() for f in _MNIST_FILES) or download:
        return root
    found = {f: next((p for p in (root / f, root / f"{f}.gz") if p.is_file()), None) for f in _MNIST_FILES}
    if not all(found.values()):
        raise _missing(root, fix)
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    prepared = cache_dir() / f"{folder}-{tag}"
    raw = prepared / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in found.items():
        target = raw / name
        if target.is_file():
            continue
        tmp = raw / f".{name}.{os.getpid()}.tmp"
        with (gzip.open(source, "rb") if source.suffix == ".gz" else open(source, "rb")) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return prepared


def _augment(cfg: DataConfig, size: int) -> Transform | None:
    """Per-item training augmentation of a decoded tensor (None without ``augment``)."""
    if not cfg.augment:
        return None
    from torchvision import transforms

    steps: list[Callable] = [transforms.RandomCrop(size, padding=max(1, size // 8))]
    if cfg.dataset in ("cifar10", "cifar100"):
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps)


def _prepared(cfg: DataConfig, images: TensorImages) -> TensorImages:
    """Resize (``image_size``) and normalise the whole tensor once (what torchvision's
    ``Normalize`` computes: ``(x - mean) / std`` per channel), then repeat a single channel
    ``channels`` times (a view: no memory per extra channel until a batch is stacked)."""
    if cfg.image_size:
        from torchvision import transforms

        images.images = transforms.Resize(cfg.image_size, antialias=True)(images.images)
    info = dataset_info(cfg.dataset)
    mean, std = (torch.tensor(v, dtype=images.images.dtype).view(-1, 1, 1) for v in (info.mean, info.std))
    images.images = images.images.sub(mean).div_(std)
    if cfg.channels and cfg.channels != images.images.shape[1]:
        images.images = images.images.expand(-1, cfg.channels, -1, -1)
    return images


def _open(cfg: DataConfig, train: bool) -> TensorImages:
    """The raw train (``train=True``) or test split of a built-in dataset, decoded and normalised."""
    name = cfg.dataset
    if name == "digits":
        return _prepared(cfg, _digits())
    from torchvision import datasets

    default = FASHION_MNIST_ROOT if name == "fashion_mnist" else str(cache_dir() / "data")
    root = Path(cfg.root or default).expanduser()
    if name in ("mnist", "fashion_mnist"):
        fix = ("install it with `apt-get install -y dataset-fashion-mnist`, set trial.data.root, or set trial.data.download: true"
               if name == "fashion_mnist" else "set trial.data.root to a folder with the MNIST idx files, or set trial.data.download: true")
        cls = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
        root = _mnist_root(root, cls.__name__, cfg.download, fix)
        return _prepared(cfg, _decoded(cls(str(root), train=train, download=cfg.download)))
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        return _prepared(cfg, _decoded(cls(str(root), train=train, download=cfg.download)))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise _missing(root, f"set trial.data.root to the folder holding {cls.base_folder}/, or set trial.data.download: true ({err})") from None


def split_indices(cfg: DataConfig, n: int, seed: int, carve: bool = True) -> tuple[list[int], list[int]]:
    """(train, val) indices into a training split of ``n`` items: a seeded permutation (by
    ``cfg.split_seed``, else ``seed``) whose first ``val_fraction`` is validation (none when
    ``carve`` is false: the data has its own validation set), the rest training, cut to
    ``limit_train``."""
    n_val = max(1, round(n * cfg.val_fraction)) if carve else 0
    if n_val >= n:
        raise ConfigError("trial.data.val_fraction", f"leaves no training samples out of {n}")
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.limit_train is not None:
        train_idx = train_idx[: cfg.limit_train]
    return train_idx, val_idx


def _folder_data(cfg: DataConfig, seed: int) -> DataBundle:
    """An image folder's splits (``trainables.run.imagefolder``): its own ``val/`` and ``test/`` when
    present, else validation carved from ``train/``."""
    from .imagefolder import ImageFiles, folder_stats, folder_transform, scan_folders

    scan = scan_folders(cfg.root or "")
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else scan.size
    train_all = scan.splits["train"]
    train_idx, val_idx = split_indices(cfg, len(train_all), seed, carve="val" not in scan.splits)
    train = [train_all[i] for i in train_idx]
    val = scan.splits.get("val") or [train_all[i] for i in val_idx]
    stats = folder_stats(cfg, train, size)
    channels = cfg.in_channels

    def files(samples: list, training: bool = False) -> ImageFiles:
        return ImageFiles(samples, scan.classes, channels, folder_transform(cfg, size, stats, training))

    return DataBundle(train=files(train, True), val=files(val), test=files(scan.splits["test"]) if "test" in scan.splits else None,
                      num_classes=len(scan.classes), in_channels=channels, example_shape=(channels, *size))


def build_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Build the datasets; val is a seeded subset of the training split disjoint from train
    (``split_indices``), or an image folder's own ``val/``."""
    if cfg.dataset == "imagefolder":
        return _folder_data(cfg, seed)
    size = cfg.image_size or dataset_info(cfg.dataset).size
    eval_full = _open(cfg, True)
    train_full = TensorImages(eval_full.images, eval_full.targets, eval_full.classes, _augment(cfg, size))
    train_idx, val_idx = split_indices(cfg, len(train_full), seed)
    test = None if cfg.dataset == "digits" else _open(cfg, False)
    example = eval_full[0][0]
    return DataBundle(
        train=Subset(train_full, train_idx),
        val=Subset(eval_full, val_idx),
        test=test,
        num_classes=len(train_full.classes),
        in_channels=int(example.shape[0]),
        example_shape=tuple(example.shape),
        train_eval=Subset(eval_full, train_idx),
    )


def light_items(dataset: Dataset) -> bool:
    """Whether loading an item is only indexing a decoded tensor: a ``TensorImages`` (or a
    ``Subset`` of one) without augmentation. Anything else (augmentation, a folder of image
    files) does per-item work in whichever process loads it."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImages) and dataset.augment is None


def auto_num_workers(cpus: int, device: torch.device, light: bool) -> int:
    """Loader processes for ``data.num_workers: auto`` on a trial given ``cpus`` CPUs.

    The training process keeps one CPU. On a GPU it only launches kernels, so per-item work
    (decoding, augmentation) gets every other CPU, and light items (one index into a decoded
    tensor) two workers to overlap batching and the host-to-device copy. On the CPU the
    training process computes with all the trial's threads and data is a small part of a
    step: light items load in-process (a worker would only add inter-process copies), per-item
    work gets a quarter of the CPUs (at least one worker from 2 CPUs on).
    """
    spare = max(0, cpus - 1)
    if device.type == "cuda":
        return min(2, spare) if light else spare
    return 0 if light else min(spare, max(1, cpus // 4))


@dataclass(frozen=True)
class LoaderSettings:
    """How a trial's loaders load: worker processes and pinned host memory."""

    num_workers: int = 0
    pin_memory: bool = False

    @classmethod
    def resolve(cls, cfg: DataConfig, cpus: int, device: torch.device, train: Dataset) -> LoaderSettings:
        """``cfg.num_workers`` (``auto``: :func:`auto_num_workers` for the training set), and
        pinned memory on CUDA (the copies to the GPU are non-blocking)."""
        workers = cfg.num_workers
        if workers == "auto":
            workers = auto_num_workers(cpus, device, light_items(train))
        return cls(int(workers), device.type == "cuda")

    def loader_kwargs(self, train: bool) -> dict[str, Any]:
        """DataLoader arguments. Evaluation loaders keep their workers across epochs; training
        loaders restart them every epoch, which keeps a resumed run bit-identical: each worker
        seeds its own random numbers (augmentation) when it starts, and a loader that kept its
        workers would also skip the seed it draws from its generator at every fresh start, so
        from the second epoch on it would shuffle differently from a run resumed there."""
        persistent = self.num_workers > 0 and not train
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "persistent_workers": persistent}


def make_loader(dataset: Dataset, batch_size: int, *, train: bool,
                settings: LoaderSettings = LoaderSettings()) -> DataLoader:
    """A DataLoader; a training loader shuffles with its own generator, reseeded per epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        generator=torch.Generator() if train else None,
        **settings.loader_kwargs(train),
    )
