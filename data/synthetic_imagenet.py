"""A tiny ImageNet-shaped folder of random JPEGs, so smoke runs and tests exercise the real decode + transform path.

`make_synthetic_imagefolder` writes `train/<class>/*.JPEG` and `val/<class>/*.JPEG` once per machine into a
directory named by a hash of its parameters, then `data.imagenet.build_imagenet_datasets` reads it exactly as it
reads ImageNet. Several ranks (or test processes) may call it at once: each writes into a private temporary
directory and renames it into place; the first rename wins and the others discard their copy, so everyone reads
the same complete folder and nobody reads a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from data.cache import cached_directory

#: Bump when the generated content changes, so stale caches are not reused.
_FORMAT_VERSION = 1


def make_synthetic_imagefolder(
    num_classes: int = 4,
    train_images_per_class: int = 8,
    val_images_per_class: int = 4,
    image_size: int = 48,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the root of a synthetic ImageFolder (`train/`, `val/`), creating it if needed.

    Images are `image_size` x `image_size` RGB JPEGs of uniform noise plus a per-class mean colour (so a model can
    learn something), fully determined by `seed`. `cache_dir` defaults to `$TMPDIR/novograd-synthetic-imagenet`.
    """
    if min(num_classes, train_images_per_class, val_images_per_class, image_size) < 1:
        raise ValueError(
            "synthetic ImageNet needs positive num_classes, train_images_per_class, val_images_per_class and "
            f"image_size; got {num_classes}, {train_images_per_class}, {val_images_per_class}, {image_size}"
        )
    params = {
        "version": _FORMAT_VERSION,
        "num_classes": num_classes,
        "train_images_per_class": train_images_per_class,
        "val_images_per_class": val_images_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    def write(root: Path) -> None:
        _write_images(root, num_classes, train_images_per_class, val_images_per_class, image_size, seed)

    return cached_directory("imagenet", params, write, cache_dir)


def _write_images(
    root: Path, num_classes: int, train_per_class: int, val_per_class: int, image_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    class_colours = rng.integers(0, 256, size=(num_classes, 3))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for class_index in range(num_classes):
            # The n-prefixed 8-digit names mimic WordNet ids, and sort in class order like ImageNet's.
            class_dir = root / split / f"n{class_index:08d}"
            class_dir.mkdir(parents=True)
            for image_index in range(per_class):
                noise = rng.integers(-64, 65, size=(image_size, image_size, 3))
                pixels = np.clip(class_colours[class_index] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(class_dir / f"{split}_{class_index}_{image_index}.JPEG", quality=90)
