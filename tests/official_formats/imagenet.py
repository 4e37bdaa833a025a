"""ILSVRC2012 in miniature, in the formats image-net.org distributes it, made on the fly for tests.

`write_imagenet_archives(directory)` writes, as a user downloads them:
- `ILSVRC2012_img_train.tar`: one uncompressed tar per class, `<wnid>.tar`, holding `<wnid>_<n>.JPEG`;
- `ILSVRC2012_img_val.tar`: flat, `ILSVRC2012_val_<8 digits>.JPEG` numbered from 1;
- the validation labels in one of the forms `scripts/prepare_imagenet.sh` reads: the official devkit
  `ILSVRC2012_devkit_t12.tar.gz` (`data/meta.mat`, MATLAB's `synsets` struct array, leaves first with
  `ILSVRC2012_ID` 1..N then inner nodes, as the real one lists 1000 leaves and 860 inner synsets; and
  `data/ILSVRC2012_validation_ground_truth.txt`, one `ILSVRC2012_ID` per validation image), Kaggle's
  `LOC_val_solution.csv`, or a `val_labels.txt` of `image wnid` lines.

meta.mat is written by `scipy.io.savemat`, run by a Python command the caller names (the suite itself does not
depend on scipy; the prepare script reads meta.mat with the same kind of command). Images are small random JPEGs,
each fully determined by its name.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
#: Real WordNet ids of ILSVRC2012 classes (tench, goldfish, great white shark), in the sorted order of the classes.
WNIDS = ("n01440764", "n01443537", "n01484850")

LabelSource = Literal["devkit", "loc_csv", "val_labels"]


@dataclass(frozen=True)
class ImageNetArchives:
    """What `write_imagenet_archives` wrote: the folder, the training image names per class, the validation
    images' classes in file order (image i + 1 is `ILSVRC2012_val_{i + 1:08d}.JPEG`)."""

    directory: Path
    train_images: dict[str, list[str]]
    val_wnids: list[str]

    @property
    def train_tar(self) -> Path:
        return self.directory / TRAIN_TAR


def val_image_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def jpeg_bytes(name: str, size: int = 40) -> bytes:
    """A `size` x `size` RGB JPEG of noise, seeded by `name` (the same name gives the same bytes)."""
    pixels = np.random.default_rng(zlib.crc32(name.encode())).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_imagenet_archives(
    directory: Path,
    train_per_class: int = 4,
    val_wnids: Sequence[str] = ("n01443537", "n01440764", "n01484850", "n01440764", "n01484850", "n01443537"),
    labels: LabelSource = "val_labels",
    python: Sequence[str] | None = None,
    truncated_class: str | None = None,
) -> ImageNetArchives:
    """Write the archives of `WNIDS` into `directory` (created); `python` (a command that can import scipy) is
    needed for `labels="devkit"`. `truncated_class`: that class's tar is cut short inside the training archive,
    as a damaged download or copy leaves it (the training archive itself stays a well-formed tar)."""
    directory.mkdir(parents=True, exist_ok=True)
    train_images = {wnid: [f"{wnid}_{i + 1}.JPEG" for i in range(train_per_class)] for wnid in WNIDS}
    write_train_tar(directory / TRAIN_TAR, train_images, truncated_class)
    with tarfile.open(directory / VAL_TAR, "w") as val:
        for number in range(1, len(val_wnids) + 1):
            _add(val, val_image_name(number), jpeg_bytes(val_image_name(number)))
    if labels == "devkit":
        if python is None:
            raise ValueError("the devkit's meta.mat is written with scipy: pass `python`, a command that imports it")
        _write_devkit(directory / DEVKIT, list(val_wnids), python)
    elif labels == "loc_csv":
        # ImageId,PredictionString: the wnid and box of each object, the first object's wnid being the label.
        rows = [f"{val_image_name(n).removesuffix('.JPEG')},{w} 10 20 30 40 {w} 5 6 7 8\n"
                for n, w in enumerate(val_wnids, start=1)]
        (directory / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    else:
        (directory / "val_labels.txt").write_text(
            "".join(f"{val_image_name(n)} {w}\n" for n, w in enumerate(val_wnids, start=1)))
    return ImageNetArchives(directory, train_images, list(val_wnids))


def write_train_tar(path: Path, train_images: dict[str, list[str]], truncated_class: str | None = None) -> None:
    """The training archive: a tar of per-class tars; `truncated_class`'s is cut inside its last image."""
    with tarfile.open(path, "w") as train:
        for wnid, names in train_images.items():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for name in names:
                    _add(class_tar, name, jpeg_bytes(name))
            payload = inner.getvalue()
            if wnid == truncated_class:
                payload = _cut_in_last_member(payload)
            _add(train, f"{wnid}.tar", payload)


def _cut_in_last_member(tar_bytes: bytes) -> bytes:
    """`tar_bytes` cut halfway through its last member's data: the earlier members whole, the last half-written,
    as a transfer that stopped leaves it."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        last = archive.getmembers()[-1]
    return tar_bytes[: last.offset_data + last.size // 2]


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(payload))


# The synsets struct array as the real meta.mat holds it (one row per synset, these fields, MATLAB cell strings
# and doubles), and the ground truth's ILSVRC2012_IDs; values arrive as JSON on stdin.
_SAVEMAT = """
import io, json, sys
import numpy as np
import scipy.io

spec = json.load(sys.stdin)
fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
          "num_train_images"]
synsets = np.zeros((len(spec["synsets"]), 1), dtype=[(name, "O") for name in fields])
for row, synset in enumerate(spec["synsets"]):
    for name in fields:
        value = synset[name]
        synsets[row, 0][name] = np.array(value, dtype=float) if isinstance(value, (int, list)) else value
buffer = io.BytesIO()
scipy.io.savemat(buffer, {"synsets": synsets})
sys.stdout.buffer.write(buffer.getvalue())
"""


def _write_devkit(path: Path, val_wnids: list[str], python: Sequence[str]) -> None:
    leaves = [
        {"ILSVRC2012_ID": i, "WNID": wnid, "words": f"class {wnid}", "gloss": "", "num_children": 0,
         "children": [], "wordnet_height": 0, "num_train_images": 4}
        for i, wnid in enumerate(WNIDS, start=1)
    ]
    # An inner node, like the real file's 860 above the classes, which the prepare script must not take for one.
    inner = {"ILSVRC2012_ID": len(WNIDS) + 1, "WNID": "n01473806", "words": "aquatic vertebrate", "gloss": "",
             "num_children": len(WNIDS), "children": list(range(1, len(WNIDS) + 1)), "wordnet_height": 1,
             "num_train_images": 0}
    meta = subprocess.run([*python, "-c", _SAVEMAT], input=json.dumps({"synsets": [*leaves, inner]}).encode(),
                          capture_output=True, check=True).stdout
    id_of = {synset["WNID"]: synset["ILSVRC2012_ID"] for synset in leaves}
    truth = "".join(f"{id_of[wnid]}\n" for wnid in val_wnids).encode()
    with tarfile.open(path, "w:gz") as devkit:
        _add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta)
        _add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
