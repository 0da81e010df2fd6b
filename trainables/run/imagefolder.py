"""A user's image folders: ``train/`` (with ``val/`` and ``test/`` beside it when they exist),
one subfolder per class, images in any format Pillow reads.

``val/`` is the validation set and ``test/`` the test set, as the user keeps them; only
without ``val/`` is a validation split carved out of ``train/`` (``data.val_fraction``). The
class list is ``train/``'s subfolders (sorted); ``val/`` and ``test/`` use the same indices,
so a class missing there does not shift the labels. Size (``data.image_size``, null: the
first training image's), channels (``data.channels``: 1 grayscale, 3 RGB), resize policy
(``data.resize``) and normalisation (``data.normalize``) are the user's keys. Every problem a
scan can see (no ``train/``, an empty class folder, an image Pillow cannot open) is a
``ConfigError`` that names the path, raised before any training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config.sections import DataConfig
from ..errors import ConfigError

__all__ = ["FolderScan", "ImageFiles", "scan_folders", "folder_stats", "folder_transform", "IMAGENET_STATS",
           "STATS_SAMPLE"]

SPLITS = ("train", "val", "test")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STATS_SAMPLE = 2000
"""Training images (a fixed sample) that ``normalize: computed`` reads for its mean and std."""
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_ROOT_PATH = "trial.data.root"
Sample = tuple[str, int]


@cache
def _extensions() -> tuple[str, ...]:
    """File extensions Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return tuple(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _open(path: str, channels: int):  # -> PIL.Image.Image
    """The image at ``path`` in ``L`` (1 channel) or ``RGB`` (3); an unreadable file raises a
    ``ConfigError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _unreadable(path, err) from None


def _unreadable(path: str, err: Exception) -> ConfigError:
    return ConfigError(_ROOT_PATH, f"cannot read image {path} ({err}); remove it or replace it with a file Pillow opens")


@dataclass(frozen=True)
class FolderScan:
    """What the folders hold: classes, (file, class index) per split present, and the first
    training image's size (H, W) and Pillow mode."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[Sample]]
    size: tuple[int, int]
    mode: str

    @property
    def gray(self) -> bool:
        return self.mode in _GRAY_MODES


def _class_files(folder: Path) -> list[str]:
    """Image files under one class folder (recursively, sorted), or a ``ConfigError`` naming it."""
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(folder, followlinks=True)
                   for f in files if f.lower().endswith(_extensions()))
    if not found:
        raise ConfigError(_ROOT_PATH, f"class folder {folder} holds no image files (expected images Pillow "
                                      f"reads: .png, .jpg, ...); remove the folder or add its images")
    return found


def _header(path: str) -> tuple[tuple[int, int], str]:
    """(H, W) and mode of an image from its header; a ``ConfigError`` naming the file when Pillow
    cannot open it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.mode
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _unreadable(path, err) from None


def scan_folders(root: str | Path) -> FolderScan:
    """List ``root``'s splits and classes and open the first image of every class folder."""
    root = Path(root).expanduser()
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(_ROOT_PATH, f"dataset files not found at {train}; expected a folder holding "
                                      f"train/<class>/*.png (and val/<class>/..., test/<class>/... when you have them)")
    classes = tuple(sorted(e.name for e in os.scandir(train) if e.is_dir()))
    if not classes:
        raise ConfigError(_ROOT_PATH, f"{train} has no class folders; expected train/<class>/<image> files")
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    first: dict[str, tuple[tuple[int, int], str]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        extra = [n for n in names if n not in index]
        if extra:
            raise ConfigError(_ROOT_PATH, f"{folder / extra[0]} is not a class of {train} "
                                          f"(classes: {', '.join(classes)}); every {split}/ class needs a train/ folder")
        if not names:
            raise ConfigError(_ROOT_PATH, f"{folder} has no class folders; expected {split}/<class>/<image> files "
                                          f"(or remove {folder})")
        samples: list[Sample] = []
        for name in names:
            files = _class_files(folder / name)
            header = _header(files[0])  # every class folder's first image must open
            first.setdefault(split, header)
            samples.extend((f, index[name]) for f in files)
        splits[split] = samples
    size, mode = first["train"]
    return FolderScan(root, classes, splits, size, mode)


class ImageFiles(Dataset):
    """(file, class index) samples read with Pillow in ``channels`` channels, then ``transform``."""

    def __init__(self, samples: list[Sample], classes: tuple[str, ...], channels: int, transform) -> None:
        self.samples, self.classes, self.channels, self.transform = samples, list(classes), channels, transform
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.transform(_open(path, self.channels)), target


def _resize_steps(cfg: DataConfig, size: tuple[int, int]) -> list:
    """``data.resize``: ``crop`` (shorter side to the target, centre crop), ``stretch`` (both
    sides to the target) or ``imagenet`` (shorter side to 256/224 of the target, centre crop)."""
    from torchvision import transforms

    if cfg.resize == "stretch":
        return [transforms.Resize(size)]
    side = min(size)
    scaled = int(side * 256 / 224) if cfg.resize == "imagenet" else side
    return [transforms.Resize(scaled), transforms.CenterCrop(size)]


def folder_transform(cfg: DataConfig, size: tuple[int, int], stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
                     train: bool):
    """PIL image -> normalised tensor: the resize policy (``augment`` in training: random
    resized crop and flip instead), ``ToTensor``, then ``Normalize(*stats)`` (None: skipped)."""
    from torchvision import transforms

    steps = ([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if train and cfg.augment
             else _resize_steps(cfg, size))
    steps.append(transforms.ToTensor())
    if stats is not None:
        steps.append(transforms.Normalize(*stats))
    return transforms.Compose(steps)


def folder_stats(cfg: DataConfig, train: list[Sample], size: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) that ``data.normalize`` names: ``computed`` from a fixed sample
    of up to ``STATS_SAMPLE`` training images as the model sees them (resized, in
    ``data.channels``), ``imagenet``'s (its gray mean for 1 channel), or ``given``."""
    channels = cfg.in_channels
    if cfg.normalize == "given":
        return tuple(cfg.mean), tuple(cfg.std)  # type: ignore[arg-type]  (validate: set with given)
    if cfg.normalize == "imagenet":
        mean, std = IMAGENET_STATS
        return (mean, std) if channels == 3 else ((sum(mean) / 3,), (sum(std) / 3,))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].tolist()
    plain = folder_transform(cfg, size, None, train=False)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for i in order:
        x = plain(_open(train[i][0], channels)).double()
        total += x.sum(dim=(1, 2))
        squares += x.square().sum(dim=(1, 2))
        pixels += x.shape[1] * x.shape[2]
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-3), 4) for v in std)
