"""A user's image folders (train/ + val/ [+ test/]) built from digits PNGs: splits as kept,
validation carved only without val/, channels, size, resize and normalisation keys, clear
errors for empty or unreadable folders, and the data facts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _image_tree import digits_png_tree
from PIL import Image

from trainables.errors import ConfigError
from trainables.run.data import build_data
from trainables.run.data_facts import data_facts


def _folder(tiny, root: Path, **dotted):
    return tiny(**{"data.dataset": "imagefolder", "data.root": str(root), "data.limit_train": None, **dotted})


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_val_folder_is_validation_and_test_folder_is_test(tmp_path: Path, tiny) -> None:
    counts = digits_png_tree(tmp_path, {"train": 200, "val": 60, "test": 40})
    cfg = _folder(tiny, tmp_path, **{"data.channels": 1})
    data = build_data(cfg.data, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (counts["train"], counts["val"], counts["test"])
    assert data.num_classes == 10 and data.in_channels == 1 and data.example_shape == (1, 8, 8)
    val_files = sorted(str(p) for p in (tmp_path / "val").rglob("*.png"))
    assert sorted(path for path, _ in data.val.samples) == val_files
    assert all(Path(path).parent.name == data.val.classes[label] for path, label in data.val.samples)
    x, _ = _stack(data.train)  # normalisation computed from these very images: mean 0, std 1
    assert x.shape == (200, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 2e-3
    facts = data_facts(cfg)
    assert facts.images["train"][0] == 200 and facts.images["val"][0] == 60 and facts.images["test"][0] == 40
    assert facts.channels == 1 and facts.size == (8, 8) and not facts.notices
    assert "computed from 200 training images" in facts.normalisation


def test_val_carved_from_train_only_without_val_folder_and_weights_warn(tmp_path: Path, tiny) -> None:
    digits_png_tree(tmp_path, {"train": 150})
    cfg = _folder(tiny, tmp_path, **{"data.val_fraction": 0.2, "data.split_seed": 3})
    data = build_data(cfg.data, seed=0)
    assert (len(data.train), len(data.val), data.test) == (120, 30, None)
    assert not {p for p, _ in data.train.samples} & {p for p, _ in data.val.samples}
    assert data.in_channels == 3 and data.example_shape == (3, 8, 8)
    x, _ = _stack(data.val)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray read as RGB
    facts = data_facts(cfg, stats=False)
    assert facts.images["val"][0] == 30 and "carved from train/" in facts.images["val"][1]
    assert len(facts.notices) == 1 and str(tmp_path / "val") in facts.notices[0]
    assert "set data.channels: 1" in facts.channels_from
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    warned = _folder(tiny, tmp_path, **{"model.name": "repvgg_tiny", "model.factory": "_factories:small_net",
                                         "model.weights": str(weights)})
    warning = data_facts(warned, stats=False).notices[-1]
    assert warning.startswith("warning: model.weights") and f"Fix: put images the weights never saw in {tmp_path / 'val'}" in warning


def test_size_resize_and_given_or_imagenet_normalisation(tmp_path: Path, tiny) -> None:
    digits_png_tree(tmp_path, {"train": 20, "val": 10})
    given = _folder(tiny, tmp_path, **{"data.channels": 1, "data.image_size": 16, "data.resize": "stretch",
                                       "data.normalize": "given", "data.mean": [0.5], "data.std": [0.25]})
    data = build_data(given.data, seed=0)
    with Image.open(data.val.samples[0][0]) as image:  # what torchvision's Resize does to a PIL image
        raw = torch.tensor(np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR)), dtype=torch.float32) / 255.0
    assert data.example_shape == (1, 16, 16)
    assert torch.allclose(data.val[0][0][0], (raw - 0.5) / 0.25, atol=1e-6)
    imagenet = data_facts(_folder(tiny, tmp_path, **{"data.normalize": "imagenet"}))
    assert "[0.485, 0.456, 0.406]" in imagenet.normalisation


@pytest.mark.parametrize(("overrides", "path", "fragment"), [
    ({"data.channels": 2}, "trial.data.channels", "1 (grayscale) or 3 (RGB)"),
    ({"data.normalize": "given", "data.mean": [0.5, 0.5], "data.std": [0.2], "data.channels": 1}, "trial.data.mean", "1 value"),
    ({"data.mean": [0.5]}, "trial.data.mean", "normalize: given"),
])
def test_folder_keys_are_checked(tmp_path: Path, tiny, overrides: dict, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        _folder(tiny, tmp_path, **overrides)
    assert info.value.path == path


def test_folder_keys_refused_for_builtin_datasets(tiny) -> None:
    with pytest.raises(ConfigError, match="applies to dataset: imagefolder") as info:
        tiny(**{"data.resize": "stretch"})
    assert info.value.path == "trial.data.resize"


def test_empty_unreadable_and_unknown_class_folders_name_the_path(tmp_path: Path, tiny) -> None:
    digits_png_tree(tmp_path, {"train": 30, "val": 10})
    cfg = _folder(tiny, tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"class folder {tmp_path / 'train' / 'empty'} holds no image files"):
        data_facts(cfg)
    (tmp_path / "train" / "empty").rmdir()
    broken = min((tmp_path / "val").iterdir()) / "000.png"  # sorts first: the file the scan opens
    broken.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=f"cannot read image {broken}"):
        build_data(cfg.data, seed=0)
    broken.unlink()
    (tmp_path / "val" / "cat").mkdir()
    (tmp_path / "val" / "cat" / "0.png").write_bytes(next((tmp_path / "train").rglob("*.png")).read_bytes())
    with pytest.raises(ConfigError, match="is not a class of"):
        data_facts(cfg)


def test_val_missing_a_class_keeps_train_labels(tmp_path: Path, tiny) -> None:
    digits_png_tree(tmp_path, {"train": 60, "val": 30})
    for png in (tmp_path / "val" / "0").glob("*.png"):
        png.unlink()
    (tmp_path / "val" / "0").rmdir()
    data = build_data(_folder(tiny, tmp_path).data, seed=0)
    assert all(data.val.classes[label] == Path(path).parent.name for path, label in data.val.samples)
    assert data.num_classes == 10 and 0 not in data.val.targets
