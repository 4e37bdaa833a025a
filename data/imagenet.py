"""ImageNet (ILSVRC2012) as torchvision ImageFolders, with the paper's standard augmentation.

Layout under `root` (what `make prepare-imagenet` writes, through `scripts/prepare_imagenet.sh`): `train/<wnid>/*.JPEG`
and `val/<wnid>/*.JPEG`.
Training: random-resized crop (area `crop_scale`) + horizontal flip; evaluation: resize the short side to
`eval_resize`, centre crop `image_size` (single crop, as Table 1). Both normalise with the ImageNet mean/std.

The loader's workers do only what needs the CPU, as NVIDIA DeepLearningExamples' and timm's loaders do: decode,
crop and flip, leaving uint8 tensors (a quarter of float32's bytes to collate, pin and copy). Conversion to float and
normalisation run on the device (`normalize_images`, the workload's `on_device`), with the same torchvision
functions the CPU ran before, so they give the same floats. Three-channel JPEGs (nearly all of ILSVRC2012) are
decoded by `torchvision.io.decode_jpeg` (libjpeg-turbo, about 1.4x PIL's speed on one core, the same pixels as
Pillow's libjpeg-turbo with its default settings); the rest (CMYK and greyscale JPEGs, the one PNG named `.JPEG`)
by PIL's `convert("RGB")` as before. The crop and resize then run on the uint8 tensor (torch's antialiased uint8
kernels, about 2.4x PIL's resize per core); they round to uint8 with a different fixed-point arithmetic than PIL's,
so a few per cent of pixels differ from a PIL resize by one level (tests/test_imagenet.py measures it).

The engine builds the DataLoaders (distributed sampler, workers, pinned memory) from these datasets; nothing here
knows about processes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from data.corrupt import SkipPolicy, UnreadableFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPARE_COMMAND = "make prepare-imagenet ARCHIVES=/path/to/archives IMAGENET_ROOT={root}"
EXPECTED_LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"


class UnreadableImageError(UnreadableFileError):
    """An image file that cannot be decoded; the message names the file."""


class LabelledImage(NamedTuple):
    """One example, and (collated by `default_collate`, which keeps the type) a batch of them."""

    #: uint8 (3, H, W), or (N, 3, H, W) collated; `normalize_images` makes the model's float input of a batch.
    image: torch.Tensor
    label: int | torch.Tensor
    #: The file at this index could not be read (`data.skip_corrupt=true`): `image` and `label` are the next
    #: readable example's, which training uses and evaluation leaves unscored.
    skipped: bool | torch.Tensor


def _decode_rgb(path: str) -> torch.Tensor:
    """Decode `path` fully into a uint8 RGB tensor (3, H, W), or raise `UnreadableImageError` naming it."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with open(path, "rb") as file:
            data = file.read()
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
            if image.shape[0] == 3:
                return image
        except RuntimeError:  # not a JPEG, or a damaged one: PIL decodes it or says why not
            pass
        with Image.open(io.BytesIO(data)) as image:
            # convert() forces the full decode here, so a truncated file fails now and not inside a transform.
            return pil_to_tensor(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(
            f"cannot decode image {path}: {error}. Replace it with the original from the ILSVRC2012 archive or "
            "delete it, or set data.skip_corrupt=true to skip unreadable images and count them."
        ) from error


class ImageNetFolder(torch.utils.data.Dataset):
    """A torchvision ImageFolder of `LabelledImage`s that names unreadable files, or skips and flags them when
    `skip_corrupt` (data/corrupt.py).

    Wraps ImageFolder rather than subclassing it so that this class is importable, and picklable for spawned
    workers, without importing torchvision.
    """

    def __init__(self, root: str, transform: Callable[[torch.Tensor], torch.Tensor], skip_corrupt: bool) -> None:
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root, transform=transform, loader=_decode_rgb)
        self.skip_policy = SkipPolicy(len(self.folder), skip_corrupt)

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, class index) pairs in ImageFolder's deterministic (sorted) order."""
        return self.folder.samples

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> LabelledImage:
        (image, label), skipped = self.skip_policy.read(index, self.folder.__getitem__)
        return LabelledImage(image, label, skipped)

    @property
    def unreadable_files(self) -> list[str]:
        """Paths found unreadable so far (in this process and its DataLoader workers)."""
        return [self.samples[i][0] for i in self.skip_policy.unreadable_indices]


def train_transform(image_size: int, crop_scale: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random-resized crop + horizontal flip of a uint8 image tensor (the paper's standard augmentation)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True),
                       v2.RandomHorizontalFlip()])


def eval_transform(image_size: int, eval_resize: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize the short side to `eval_resize`, centre crop `image_size`: the single-crop evaluation of Table 1."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(eval_resize, antialias=True), v2.CenterCrop(image_size)])


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W), on any device, as the model's float32 input: scaled to [0, 1] and normalised
    with the ImageNet mean/std by torchvision's own functions, the floats a CPU transform would give; the memory
    layout (channels-last) is kept."""
    from torchvision.transforms.v2.functional import normalize, to_dtype

    return normalize(to_dtype(images, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def check_layout(root: str | os.PathLike[str]) -> Path:
    """Return `root` as a Path if it holds non-empty `train/` and `val/` class folders, else a FileNotFoundError
    that says how to make them."""
    root = Path(root).expanduser()
    for split in ("train", "val"):
        split_dir = root / split
        has_class_dir = split_dir.is_dir() and any(entry.is_dir() for entry in os.scandir(split_dir))
        if not has_class_dir:
            raise FileNotFoundError(
                f"ImageNet not found: {split_dir} is missing or holds no class folders. Expected {EXPECTED_LAYOUT}. "
                f"Create it from the official ILSVRC2012 archives with `{PREPARE_COMMAND.format(root=root)}`, "
                "then point data.root (or the IMAGENET_ROOT environment variable) at it."
            )
    return root


def build_imagenet_datasets(
    root: str | os.PathLike[str],
    num_classes: int,
    image_size: int = 224,
    eval_resize: int = 256,
    crop_scale: Sequence[float] = (0.08, 1.0),
    skip_corrupt: bool = False,
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The (train, val) ImageFolders under `root`, with the paper's transforms.

    Args:
        root: directory holding `train/<wnid>/` and `val/<wnid>/`.
        num_classes: the class folders each split must hold (1000 for ILSVRC2012); a mismatch, e.g. a half-
            extracted archive, is an error rather than a silently smaller classifier target.
        image_size: training crop and evaluation centre-crop side.
        eval_resize: short side the evaluation image is resized to before the centre crop.
        crop_scale: area range of the random-resized crop, as a fraction of the image.
        skip_corrupt: flag unreadable images (each sample's `skipped`, with the next readable image in its place)
            instead of raising.
    """
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {list(crop_scale)}")
    if eval_resize < image_size:
        raise ValueError(f"data.eval_resize ({eval_resize}) must be at least data.image_size ({image_size})")
    root = check_layout(root)
    try:
        train = ImageNetFolder(str(root / "train"), train_transform(image_size, crop_scale), skip_corrupt)
        val = ImageNetFolder(str(root / "val"), eval_transform(image_size, eval_resize), skip_corrupt)
    except FileNotFoundError as error:  # class folders without any image file
        raise FileNotFoundError(
            f"{error}. Expected {EXPECTED_LAYOUT}; re-run `{PREPARE_COMMAND.format(root=root)}` to complete the "
            "extraction."
        ) from error
    if train.classes != val.classes or len(train.classes) != num_classes:
        raise ValueError(
            f"{root}: train/ has {len(train.classes)} class folders and val/ has {len(val.classes)}, "
            f"data.num_classes is {num_classes}; they must all agree (re-run `{PREPARE_COMMAND.format(root=root)}`)."
        )
    return train, val
