"""What a trial's data will be, known before any training: classes, images per split, size,
channels, normalisation, and the notices a user must see (validation carved out of the
training images; starting weights that may have seen them). ``--dry-run`` prints these facts
and a sweep prints its notices before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.datasets import dataset_info
from ..config.sections import TrialConfig
from .data import split_indices

__all__ = ["DataFacts", "data_facts"]



@dataclass(frozen=True)
class DataFacts:
    """One trial's data as the model will see it."""

    dataset: str
    classes: list[str] | int
    images: dict[str, tuple[int, str]]  # split -> (count, where from)
    size: tuple[int, int]
    size_from: str
    channels: int
    channels_from: str
    normalisation: str
    notices: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The facts as console lines (dry run)."""
        names = self.classes if isinstance(self.classes, int) else len(self.classes)
        shown = "" if isinstance(self.classes, int) else f": {', '.join(self.classes[:10])}{' ...' if len(self.classes) > 10 else ''}"
        out = [f"# data: {self.dataset}", f"classes: {names}{shown}"]
        out += [f"{split}: {n} images ({where})" for split, (n, where) in self.images.items()]
        if "test" not in self.images:
            out.append("test: none (no test_acc; reports compare fused_val_acc)")
        out += [f"size: {self.size[0]}x{self.size[1]} ({self.size_from})",
                f"channels: {self.channels} ({self.channels_from})", f"normalisation: {self.normalisation}"]
        return out + self.notices


def _weights_notice(cfg: TrialConfig, fix: str) -> list[str]:
    if cfg.model.weights is None:
        return []
    return [(f"warning: model.weights ({cfg.model.weights}) is set and validation is carved from the training "
             f"images: the weights may have been trained on those validation images, which inflates val_acc and "
             f"every choice made on it. Fix: {fix}")]


def _builtin(cfg: TrialConfig) -> DataFacts:
    data = cfg.data
    info = dataset_info(data.dataset)
    n_train, n_test = info.train_images, info.test_images
    train, val = split_indices(data, n_train, cfg.seed)
    seed = "data.split_seed" if data.split_seed is not None else "each trial's seed"
    images = {"train": (len(train), "training split" + (f", limit_train {data.limit_train}" if data.limit_train else "")),
              "val": (len(val), f"carved from the training split (val_fraction {data.val_fraction}, split by {seed})")}
    if n_test:
        images["test"] = (n_test, "the dataset's test split")
    side = data.image_size or info.size
    native = info.channels
    mean, std = info.mean, info.std
    notices = [] if data.split_seed is not None else _weights_notice(
        cfg, "set data.split_seed to the seed of the split the weights were trained on")
    return DataFacts(data.dataset, info.classes, images, (side, side),
                     "data.image_size" if data.image_size else "native", data.in_channels,
                     "native" if data.in_channels == native else "the gray channel repeated (data.channels)",
                     f"mean {list(mean)}, std {list(std)} (the dataset's published statistics)", notices)


def _folder(cfg: TrialConfig, stats: bool) -> DataFacts:
    from .imagefolder import STATS_SAMPLE, folder_stats, scan_folders

    data = cfg.data
    scan = scan_folders(data.root or "")
    train_all = scan.splits["train"]
    carved = "val" not in scan.splits
    train_idx, val_idx = split_indices(data, len(train_all), cfg.seed, carve=carved)
    root = scan.root
    images = {"train": (len(train_idx), f"{root / 'train'}" + (f", limit_train {data.limit_train}" if data.limit_train else ""))}
    notices: list[str] = []
    if carved:
        seed = "data.split_seed" if data.split_seed is not None else "each trial's seed"
        images["val"] = (len(val_idx), f"carved from train/: val_fraction {data.val_fraction}, split by {seed}")
        notices.append(f"note: no {root / 'val'} folder: validation is {len(val_idx)} images carved from train/ "
                       f"(data.val_fraction {data.val_fraction}); put held-out images in val/<class>/ to validate on them")
        notices += _weights_notice(cfg, f"put images the weights never saw in {root / 'val'}/<class>/")
    else:
        images["val"] = (len(scan.splits["val"]), str(root / "val"))
    if "test" in scan.splits:
        images["test"] = (len(scan.splits["test"]), str(root / "test"))
    size = (data.image_size, data.image_size) if data.image_size else scan.size
    size_from = (f"data.image_size, resize: {data.resize}" if data.image_size
                 else f"the first training image's own; others resized to it ({data.resize})")
    channels = data.in_channels
    kind = "grayscale" if scan.gray else "color"
    channels_from = f"{'read as grayscale' if channels == 1 else 'read as RGB'}; the images are {kind} (mode {scan.mode})"
    if scan.gray and channels == 3:
        channels_from += "; set data.channels: 1 to keep one channel"
    if data.normalize == "computed":
        if stats:
            train = [train_all[i] for i in train_idx]
            mean, std = folder_stats(data, train, size)
            norm = f"mean {list(mean)}, std {list(std)} (computed from {min(len(train), STATS_SAMPLE)} training images)"
        else:
            norm = "computed from the training images by each trial"
    else:
        mean, std = folder_stats(data, [], size)
        norm = f"mean {list(mean)}, std {list(std)} ({data.normalize})"
    return DataFacts("imagefolder", list(scan.classes), images, size, size_from, channels, channels_from, norm, notices)


def data_facts(cfg: TrialConfig, stats: bool = True) -> DataFacts:
    """The facts of ``cfg``'s data; an image folder is scanned (a ``ConfigError`` names any
    unreadable or empty folder) and, with ``stats``, its normalisation computed."""
    return _folder(cfg, stats) if cfg.data.dataset == "imagefolder" else _builtin(cfg)
