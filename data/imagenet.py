"""ImageNet (ILSVRC2012) as torchvision ImageFolders, with the paper's standard augmentation.

Layout under `root` (what `make prepare-imagenet` writes, through `scripts/prepare_imagenet.sh`): `train/<wnid>/*.JPEG`
and `val/<wnid>/*.JPEG`.
Training: random-resized crop (area `crop_scale`) + horizontal flip; evaluation: resize the short side to
`eval_resize`, centre crop `image_size` (single crop, as Table 1). Both normalise with the ImageNet mean/std.

The loader's workers do only what needs the CPU, as NVIDIA DeepLearningExamples' and timm's loaders do: decode,
crop and flip, leaving uint8 tensors (a quarter of float32's bytes to collate, pin and copy). Conversion to float and
normalisation run on the device (`normalize_images`, the workload's `on_device`), with the same torchvision
functions the CPU ran before, so they give the same floats. Three-channel JPEGs (nearly all of ILSVRC2012) are
decoded by `torchvision.io.decode_jpeg` (libjpeg-turbo, the same pixels as Pillow's libjpeg-turbo with its default
settings), greyscale ones too (their one channel repeated, as PIL's `convert("RGB")` does); the rest (CMYK JPEGs,
the one PNG named `.JPEG`) by PIL's `convert("RGB")` as before. The crop and resize then run on the uint8 tensor
(torch's antialiased uint8 kernels; `make bench-data` times PIL's resize against them); they round to uint8 with a
different fixed-point arithmetic than PIL's, so a few per cent of pixels differ from a PIL resize by one level
(tests/test_imagenet.py bounds it, results/bench/data.md measures it).

`decode="gpu"` (`data.decode=gpu`, for nodes with few cores per GPU) moves the decode to the device as well: workers
only read each three-channel JPEG's bytes and draw its crop and flip, from the same per-sample generator and in the
same order as the CPU path's transform, and hand over `EncodedImage`s; `decode_on_device` decodes a batch of them
with nvJPEG (`torchvision.io.decode_jpeg` on a list, batched) and crops, resizes and flips each image on the device
with the same torchvision functions. The data order and the crops do not depend on where decoding runs, so a resume
stays exact; on the CPU device the images are those of the CPU path bit for bit (tests/test_imagenet.py). Files
nvJPEG is not given (greyscale and CMYK JPEGs, the PNG named .JPEG: PIL's header says so) are decoded and cropped
in the worker as before and join the batch as finished tensors.

The engine builds the DataLoaders (distributed sampler, workers, pinned memory) from these datasets; nothing here
knows about processes.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from data.corrupt import SkipPolicy, UnreadableFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPARE_COMMAND = "make prepare-imagenet ARCHIVES=/path/to/archives IMAGENET_ROOT={root}"
EXPECTED_LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"
DECODE_CHOICES = ("cpu", "gpu")


class UnreadableImageError(UnreadableFileError):
    """An image file that cannot be decoded; the message names the file."""


class LabelledImage(NamedTuple):
    """One example, and (collated by `default_collate`, which keeps the type) a batch of them."""

    #: uint8 (3, H, W), or (N, 3, H, W) collated; `normalize_images` makes the model's float input of a batch.
    #: Under decode="gpu": an `EncodedImage`, collated into an `EncodedBatch` that `decode_on_device` turns into the
    #: (N, 3, H, W) batch.
    image: torch.Tensor | EncodedImage | EncodedBatch
    label: int | torch.Tensor
    #: The file at this index could not be read (`data.skip_corrupt=true`): `image` and `label` are the next
    #: readable example's, which training uses and evaluation leaves unscored.
    skipped: bool | torch.Tensor


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG the worker read but did not decode (decode="gpu"), with the rest of its transform drawn.

    Not a tensor, list or tuple, so the engine's `to_device` leaves it on the host, where `decode_jpeg` reads its
    input whatever the device it decodes on."""

    #: The file's bytes, uint8 1-D; in an `EncodedBatch`, where they are in the batch's `data`.
    data: torch.Tensor | slice
    #: Training: the random-resized crop's box (top, left, height, width) in the full image, drawn in the worker.
    #: None: evaluation's resize of the short side and centre crop.
    box: tuple[int, int, int, int] | None
    flip: bool = False


@dataclass(frozen=True)
class EncodedBatch:
    """A decode="gpu" batch as collated: the bytes of all its `EncodedImage`s in one tensor, so that a worker hands
    them to the main process as one block of shared memory (a tensor per image costs a shared-memory segment, a file
    descriptor and their pickling each), and per example its `EncodedImage` (`data`: its slice of the batch's), or
    the uint8 image the worker decoded itself. Not a tensor, list or tuple, so the engine's `to_device` leaves it
    on the host, where `decode_jpeg` reads its input whatever the device it decodes on."""

    data: torch.Tensor
    images: list[torch.Tensor | EncodedImage]


class JpegFile(NamedTuple):
    """A three-channel JPEG's bytes (uint8 1-D) and its size, read from its header: what the worker keeps of a file
    it leaves to the device to decode."""

    data: torch.Tensor
    height: int
    width: int


def _decode_rgb(path: str) -> torch.Tensor:
    """Decode `path` fully into a uint8 RGB tensor (3, H, W), or raise `UnreadableImageError` naming it."""
    return _decode_bytes(path, _read(path))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise _unreadable(path, error) from error


def _decode_bytes(path: str, data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
            if image.shape[0] == 3:
                return image
            if image.shape[0] == 1:  # greyscale: PIL's convert("RGB") repeats the one channel
                return image.expand(3, -1, -1).clone()
        except RuntimeError:  # not a JPEG, or a damaged one: PIL decodes it or says why not
            pass
        with Image.open(io.BytesIO(data)) as image:
            # convert() forces the full decode here, so a truncated file fails now and not inside a transform.
            return pil_to_tensor(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str, error: BaseException) -> UnreadableImageError:
    return UnreadableImageError(
        f"cannot decode image {path}: {error}. Replace it with the original from the ILSVRC2012 archive or "
        "delete it, or set data.skip_corrupt=true to skip unreadable images and count them."
    )


def _read_for_device(path: str) -> JpegFile | torch.Tensor:
    """The loader of decode="gpu": a three-channel JPEG's bytes and size (its header only is parsed), or, for any
    other file, the full decode of the CPU path."""
    data = _read(path)
    try:
        with Image.open(io.BytesIO(data)) as header:
            if header.format == "JPEG" and header.mode == "RGB":
                return JpegFile(torch.frombuffer(bytearray(data), dtype=torch.uint8), header.height, header.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass  # the CPU decode names the file
    return _decode_bytes(path, data)


class DeferredTransform:
    """The transform of decode="gpu": a `JpegFile` becomes an `EncodedImage` whose crop and flip are drawn here, as
    `transform` (the CPU path's `train_transform` or `eval_transform`) would draw them, from the same generator in
    the same order; a tensor decoded in the worker goes through `transform` itself."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], train: bool) -> None:
        self.transform = transform
        self.train = train

    def __call__(self, image: JpegFile | torch.Tensor) -> EncodedImage | torch.Tensor:
        if isinstance(image, torch.Tensor):
            return self.transform(image)
        if not self.train:
            return EncodedImage(image.data, None)
        crop, flip = self.transform.transforms
        # make_params reads only the size: a stand-in without pixels. v2's RandomHorizontalFlip draws its coin after
        # the crop's parameters, as torch.rand(1) < p.
        box = crop.make_params([torch.empty((), dtype=torch.uint8).expand(3, image.height, image.width)])
        flipped = bool(torch.rand(1) < flip.p)
        return EncodedImage(image.data, (box["top"], box["left"], box["height"], box["width"]), flipped)


def decode_on_device(batch: EncodedBatch, device: torch.device, image_size: int, eval_resize: int) -> torch.Tensor:
    """The uint8 batch (N, 3, image_size, image_size) on `device` of a decode="gpu" batch: the
    `EncodedImage`s decoded together by `decode_jpeg` on `device` (nvJPEG on CUDA, libjpeg-turbo on the CPU), each
    cropped, resized and flipped as `train_transform`/`eval_transform` would, the other (finished) tensors in their
    places."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    images = batch.images
    encoded = [index for index, image in enumerate(images) if isinstance(image, EncodedImage)]
    decoded = decode_jpeg([batch.data[images[index].data] for index in encoded], mode=ImageReadMode.RGB,
                          device=device) if encoded else []
    finished = [image.to(device, non_blocking=True) if isinstance(image, torch.Tensor) else image for image in images]
    for index, image in zip(encoded, decoded):
        encoded_image = images[index]
        if encoded_image.box is None:
            image = F.center_crop(F.resize(image, [eval_resize], antialias=True), [image_size, image_size])
        else:
            image = F.resized_crop(image, *encoded_image.box, size=[image_size, image_size], antialias=True)
            if encoded_image.flip:
                image = F.horizontal_flip(image)
        finished[index] = image
    return torch.stack(finished)


def collate_images(samples: list[LabelledImage]) -> LabelledImage:
    """`default_collate`'s batch, except that images not all tensors (decode="gpu") become an `EncodedBatch`, for
    `decode_on_device`."""
    from torch.utils.data import default_collate

    images = [sample.image for sample in samples]
    if all(isinstance(image, torch.Tensor) for image in images):
        return default_collate(samples)
    encoded = [image.data for image in images if isinstance(image, EncodedImage)]
    in_batch, start = [], 0
    for image in images:
        if isinstance(image, EncodedImage):
            end = start + image.data.numel()
            image, start = dataclasses.replace(image, data=slice(start, end)), end
        in_batch.append(image)
    data = torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8)
    return default_collate([sample._replace(image=0) for sample in samples])._replace(
        image=EncodedBatch(data, in_batch))


class ImageNetFolder(torch.utils.data.Dataset):
    """A torchvision ImageFolder of `LabelledImage`s that names unreadable files, or skips and flags them when
    `skip_corrupt` (data/corrupt.py).

    Wraps ImageFolder rather than subclassing it so that this class is importable, and picklable for spawned
    workers, without importing torchvision.
    """

    def __init__(self, root: str, transform: Callable[[torch.Tensor], torch.Tensor], skip_corrupt: bool,
                 loader: Callable[[str], torch.Tensor | JpegFile] = _decode_rgb) -> None:
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root, transform=transform, loader=loader)
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

    mean, std = _mean_std(images.device)
    return normalize(to_dtype(images, torch.float32, scale=True), mean, std, inplace=True)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet mean and std on `device`, made once: torchvision would copy its lists there for every batch."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(-1, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(-1, 1, 1))


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
    decode: str = "cpu",
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
        decode: "cpu": the workers decode, crop and flip; "gpu": they read the JPEGs and draw the crops, and the
            workload's `on_device` decodes (`decode_on_device`).
    """
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {list(crop_scale)}")
    if eval_resize < image_size:
        raise ValueError(f"data.eval_resize ({eval_resize}) must be at least data.image_size ({image_size})")
    if decode not in DECODE_CHOICES:
        raise ValueError(f"data.decode must be one of {list(DECODE_CHOICES)}, got {decode!r}")
    root = check_layout(root)
    transforms = {"train": train_transform(image_size, crop_scale), "val": eval_transform(image_size, eval_resize)}
    if decode == "gpu":
        transforms = {split: DeferredTransform(transform, split == "train") for split, transform in transforms.items()}
    loader = _read_for_device if decode == "gpu" else _decode_rgb
    try:
        train = ImageNetFolder(str(root / "train"), transforms["train"], skip_corrupt, loader)
        val = ImageNetFolder(str(root / "val"), transforms["val"], skip_corrupt, loader)
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
