"""A user's image folders built from scikit-learn's digits: ``<root>/<split>/<digit>/<i>.png``,
8x8 grayscale PNGs (tests put ``tests/`` on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_png_tree(root: Path, splits: dict[str, int], upscale: int = 1) -> dict[str, int]:
    """Write the first images of the digits set into ``root/<split>/<class>/`` (consecutive,
    disjoint blocks, ``splits[split]`` images each), each pixel ``upscale`` x ``upscale``;
    returns the images written per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images * 255.0 / 16.0).round().astype(np.uint8)
    start, written = 0, {}
    for split, count in splits.items():
        for i in range(start, start + count):
            folder = root / split / str(int(bunch.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            image = np.kron(pixels[i], np.ones((upscale, upscale), dtype=np.uint8))
            Image.fromarray(image, mode="L").save(folder / f"{i}.png")
        start += count
        written[split] = count
    return written
