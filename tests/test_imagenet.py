"""ImageNet data (real layout, synthetic twin, errors) and the ImageNet workload's metrics; the prepare script on
official-format archives is tested in test_imagenet_official.py."""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from script_modules import load_script
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from data.corrupt import CorruptFileWarning
from data.imagenet import (
    IMAGENET_STD,
    EncodedImage,
    ImageNetFolder,
    UnreadableImageError,
    build_imagenet_datasets,
    decode_on_device,
    normalize_images,
)
from data.synthetic_imagenet import make_synthetic_imagefolder
from novograd.workloads.imagenet import ImageNetWorkload, top_k_correct

bench_data = load_script("bench_data")  # the loader before the uint8 batches: the images to compare with

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_imagefolder(num_classes=3, train_images_per_class=4, val_images_per_class=2,
                                      image_size=40, seed=1, cache_dir=tmp_path_factory.mktemp("synthetic"))


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "imagenet"))


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(overrides=list(overrides))


# --- synthetic twin ---------------------------------------------------------------------------------------------

def test_synthetic_folder_layout_and_determinism(tmp_path):
    kwargs = dict(num_classes=2, train_images_per_class=3, val_images_per_class=2, image_size=24, seed=5)
    first = make_synthetic_imagefolder(**kwargs, cache_dir=tmp_path / "a")
    again = make_synthetic_imagefolder(**kwargs, cache_dir=tmp_path / "a")
    elsewhere = make_synthetic_imagefolder(**kwargs, cache_dir=tmp_path / "b")
    other_seed = make_synthetic_imagefolder(**{**kwargs, "seed": 6}, cache_dir=tmp_path / "a")
    assert again == first and other_seed != first and elsewhere.name == first.name
    files = sorted(p.relative_to(first) for p in first.rglob("*.JPEG"))
    assert len(files) == 2 * 3 + 2 * 2
    assert sorted(p.name for p in (first / "train").iterdir()) == ["n00000000", "n00000001"]
    assert all((first / f).read_bytes() == (elsewhere / f).read_bytes() for f in files)
    assert (first / files[0]).read_bytes() != (other_seed / files[0]).read_bytes()
    with Image.open(first / files[0]) as image:
        assert image.format == "JPEG" and image.size == (24, 24) and image.mode == "RGB"


def test_concurrent_writers_agree_and_leave_no_staging(tmp_path):
    with ThreadPoolExecutor(max_workers=6) as pool:
        roots = list(pool.map(lambda _: make_synthetic_imagefolder(num_classes=2, cache_dir=tmp_path), range(6)))
    assert len(set(roots)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [roots[0].name]  # the losers removed their staging copies
    assert len(list(roots[0].rglob("*.JPEG"))) == 2 * 8 + 2 * 4


# --- datasets and transforms ------------------------------------------------------------------------------------

def test_datasets_decode_and_transform(synthetic_root):
    train, val = build_imagenet_datasets(synthetic_root, num_classes=3, image_size=32, eval_resize=36)
    assert (len(train), len(val)) == (12, 6)
    assert train.classes == val.classes == ["n00000000", "n00000001", "n00000002"]
    image, label, skipped = train[5]
    assert type(image) is torch.Tensor and image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert label == 1 and skipped is False
    torch.manual_seed(0)
    crops = [train[0].image for _ in range(3)]
    assert not torch.equal(crops[0], crops[1])  # random-resized crop and flip
    assert torch.equal(val[0].image, val[0].image)  # evaluation is deterministic


def test_decoder_gives_pils_pixels(synthetic_root, tmp_path):
    """torchvision's libjpeg-turbo decode (three-channel JPEGs) and the PIL fallback (greyscale and CMYK JPEGs, a
    PNG named .JPEG, as ILSVRC2012 holds) give exactly the pixels of the PIL decode the loader used before."""
    folder = tmp_path / "mixed" / "n00000000"
    folder.mkdir(parents=True)
    photo = bench_data.pil_rgb(next((synthetic_root / "train").rglob("*.JPEG")))
    photo.convert("L").save(folder / "grey.JPEG", format="JPEG")
    photo.convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
    photo.save(folder / "png.JPEG", format="PNG")
    for root in (synthetic_root / "train", tmp_path / "mixed"):
        dataset = ImageNetFolder(str(root), transform=lambda image: image, skip_corrupt=False)
        for index, (path, _) in enumerate(dataset.samples):
            image = dataset[index].image
            assert image.dtype == torch.uint8 and torch.equal(image, pil_to_tensor(bench_data.pil_rgb(path))), path


def todays_transform(train: bool):
    """The loader's transform before the uint8 batches, at the synthetic twin's sizes."""
    return bench_data.todays_transform(train, image_size=32, eval_resize=36)


@pytest.mark.parametrize("split", ["train", "val"])
def test_uint8_path_gives_todays_images(synthetic_root, split):
    """The model's input from the uint8 path (crop on the tensor, `normalize_images` on the device) against the
    same sample, same seed, through today's PIL transform, from the same decode (test above).

    Tolerance: the antialiased resize rounds to uint8 in both, with different fixed-point arithmetic (PIL's, torch's
    uint8 kernels), so a pixel may land one level apart: 1/255 before normalisation, 1/(255 std) after, and never
    more. Measured: 2% of the values of a 500x375 photograph's 224 crops; here 4% of the evaluation images', and
    0-26% of the training crops' (a quarter where a crop is upsampled to 32 pixels, none where the resize is exact).
    Nothing after the resize differs (the conversion is bit-identical, test below). Negative control: another
    seed's crop of the same image is off by far more than one level."""
    train, val = build_imagenet_datasets(synthetic_root, num_classes=3, image_size=32, eval_resize=36)
    dataset = train if split == "train" else val
    one_level = 1 / (255 * torch.tensor(IMAGENET_STD))[:, None, None] + 1e-6
    differing = []
    for index in range(len(dataset)):
        torch.manual_seed(index)
        new = normalize_images(dataset[index].image)
        torch.manual_seed(index)
        today = todays_transform(split == "train")(bench_data.pil_rgb(dataset.samples[index][0]))
        assert ((new - today).abs() <= one_level).all(), (index, (new - today).abs().max())
        differing.append((new != today).float().mean().item())
    assert sum(differing) / len(differing) < 0.15, differing  # measured: 0.08 (train), 0.04 (val)
    if split == "train":  # negative control: the same image, another seed's crop and flip
        torch.manual_seed(1)
        today = todays_transform(train=True)(bench_data.pil_rgb(dataset.samples[0][0]))
        torch.manual_seed(0)
        assert (normalize_images(dataset[0].image) - today).abs().max() > 10 * one_level.max()


def test_normalize_images_is_todays_conversion_bit_for_bit():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    conversion = v2.Compose(todays_transform(train=False).transforms[-3:])  # ToDtype, Normalize, ToPureTensor
    today = torch.stack([conversion(image) for image in images])
    assert torch.equal(normalize_images(images), today)
    channels_last = normalize_images(images.contiguous(memory_format=torch.channels_last))
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, today)


@pytest.mark.parametrize("layout", ["missing", "empty", "no_val", "empty_class_folders"])
def test_missing_dataset_names_the_make_target(tmp_path, layout):
    root = tmp_path / "imagenet"
    if layout != "missing":
        root.mkdir()
    if layout in ("no_val", "empty_class_folders"):
        (root / "train" / "n01440764").mkdir(parents=True)
    if layout == "empty_class_folders":
        (root / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="make prepare-imagenet ARCHIVES=") as error:
        build_imagenet_datasets(root, num_classes=1)
    assert "train/<wnid>" in str(error.value)


def test_class_count_mismatch_is_an_error(synthetic_root):
    with pytest.raises(ValueError, match="3 class folders.*num_classes is 1000"):
        build_imagenet_datasets(synthetic_root, num_classes=1000)


def corrupt_one_image(root: Path) -> tuple[int, str]:
    """Truncate the second training image of class 0; return its index and path."""
    path = root / "train" / "n00000000" / "train_0_1.JPEG"
    path.write_bytes(path.read_bytes()[:200])
    return 1, str(path)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_jpeg_is_an_error_naming_the_file(synthetic_root, tmp_path, num_workers):
    root = copy_of(synthetic_root, tmp_path)
    index, path = corrupt_one_image(root)
    train, _ = build_imagenet_datasets(root, num_classes=3, image_size=32, eval_resize=36)
    assert train.samples[index][0] == path
    if num_workers == 0:
        with pytest.raises(UnreadableImageError, match=f"{path}.*data.skip_corrupt=true"):
            train[index]
    else:  # as the engine reads it: the worker's error reaches the main process, still naming the file
        loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=num_workers)
        with pytest.raises(UnreadableImageError, match=path):
            list(loader)


def test_skip_corrupt_substitutes_the_next_image_and_flags_it_across_workers(synthetic_root, tmp_path):
    root = copy_of(synthetic_root, tmp_path)
    index, path = corrupt_one_image(root)
    train, _ = build_imagenet_datasets(root, num_classes=3, image_size=32, eval_resize=36, skip_corrupt=True)
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=1)
    batches = list(loader)
    skipped = torch.cat([batch.skipped for batch in batches])
    assert len(skipped) == len(train)  # the epoch keeps its length
    assert skipped.nonzero().flatten().tolist() == [index]  # the flag travels through collate
    assert train.unreadable_files == [path]  # found in the worker process
    standing_in = train[index]
    assert standing_in.skipped and standing_in.label == train.samples[index + 1][1]
    assert train.unreadable_files == [path]  # one entry per file, not per read

    fresh, _ = build_imagenet_datasets(root, num_classes=3, image_size=32, eval_resize=36, skip_corrupt=True)
    with pytest.warns(CorruptFileWarning, match=f"skipping an unreadable file.*{path}") as warned:
        fresh[index]
        fresh[index]
    assert len(warned) == 1  # named once: the second read skips the file without decoding it


def mixed_folder(synthetic_root: Path, tmp_path: Path) -> Path:
    """The twin plus, in both splits, the files the GPU decode leaves to the worker: a greyscale JPEG and a PNG
    named .JPEG."""
    root = copy_of(synthetic_root, tmp_path)
    photo = bench_data.pil_rgb(next((root / "train").rglob("*.JPEG")))
    for split in ("train", "val"):
        photo.convert("L").save(root / split / "n00000001" / "grey.JPEG", format="JPEG")
        photo.save(root / split / "n00000002" / "png.JPEG", format="PNG")
    return root


def gpu_decode_batches(root: Path, split: str, device: torch.device, seed: int = 0):
    """(the CPU path's uint8 batch, the GPU-decode path's batch as the loader hands it, its samples) of every image
    of `split`, each sample drawn with the generator seeded as the engine seeds it per sample."""
    workload = ImageNetWorkload(model={}, data={"image_size": 32, "eval_resize": 36})
    batches = {}
    for decode in ("cpu", "gpu"):
        train, val = build_imagenet_datasets(root, num_classes=3, image_size=32, eval_resize=36, decode=decode)
        dataset = train if split == "train" else val
        samples = []
        for index in range(len(dataset)):
            torch.manual_seed(seed + index)
            samples.append(dataset[index])
        batches[decode] = workload.collate(samples)
    return batches["cpu"], batches["gpu"], workload


@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_decode_on_the_cpu_device_gives_the_cpu_paths_images(synthetic_root, tmp_path, split):
    """data.decode=gpu with the decode, crop and flip on the CPU device: the workers' crops and flips are drawn from
    the per-sample generator as the CPU path draws them, so the model sees the CPU path's images bit for bit (the
    files left to the worker included, in their places); the data order and resume do not depend on the decode.
    Negative control: one crop box moved by a pixel (training) or another resize (evaluation) changes the images."""
    root = mixed_folder(synthetic_root, tmp_path)
    cpu, gpu, workload = gpu_decode_batches(root, split, torch.device("cpu"))
    kinds = [type(image) for image in gpu.image.images]
    assert kinds.count(EncodedImage) == len(kinds) - 2 and kinds.count(torch.Tensor) == 2  # grey, png: finished
    assert gpu.image.data.dim() == 1  # every JPEG's bytes in one tensor, each image its slice of it
    assert all(isinstance(image.data, slice) for image in gpu.image.images if isinstance(image, EncodedImage))
    assert torch.equal(gpu.label, cpu.label) and torch.equal(gpu.skipped, cpu.skipped)
    assert torch.equal(workload.on_device(gpu).image, normalize_images(cpu.image))
    assert torch.equal(decode_on_device(gpu.image, torch.device("cpu"), 32, 36), cpu.image)

    if split == "train":
        images = gpu.image.images
        first = next(i for i, image in enumerate(images) if isinstance(image, EncodedImage))
        top, left, height, width = images[first].box
        moved = images[first].box[:1] + (left + 1 if left == 0 else left - 1, height, width)
        shifted = [*images]
        shifted[first] = EncodedImage(images[first].data, moved, images[first].flip)
        shifted_batch = dataclasses.replace(gpu.image, images=shifted)
        assert not torch.equal(decode_on_device(shifted_batch, torch.device("cpu"), 32, 36)[first], cpu.image[first])
        assert any(image.flip for image in images if isinstance(image, EncodedImage))  # both flips exercised
        assert not all(image.flip for image in images if isinstance(image, EncodedImage))
    else:
        assert not torch.equal(decode_on_device(gpu.image, torch.device("cpu"), 32, 40), cpu.image)


def test_gpu_decode_batches_cross_loader_workers(synthetic_root):
    """The GPU-decode samples pickle across a DataLoader worker and collate into one tensor the device decodes."""
    train, _ = build_imagenet_datasets(synthetic_root, num_classes=3, image_size=32, eval_resize=36, decode="gpu")
    workload = ImageNetWorkload(model={}, data={"image_size": 32, "eval_resize": 36})
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=1, collate_fn=workload.collate)
    batch = next(iter(loader))
    assert all(isinstance(image, EncodedImage) for image in batch.image.images) and batch.label.shape == (4,)
    assert workload.on_device(batch).image.shape == (4, 3, 32, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_decode_on_cuda_gives_the_cpu_paths_images_up_to_the_decoders_rounding(synthetic_root, tmp_path, split):
    """nvJPEG (and the float resize torchvision runs for uint8 on CUDA) against libjpeg-turbo and torch's uint8 CPU
    kernels, on the same crops: equal up to rounding, well under one level on average, where a crop of another seed
    is off by tens of levels (negative control). `make gpu-check` reports the largest difference."""
    root = mixed_folder(synthetic_root, tmp_path)
    cpu, gpu, workload = gpu_decode_batches(root, split, torch.device("cuda"))
    batch = workload.on_device(gpu._replace(label=gpu.label.cuda(), skipped=gpu.skipped.cuda()))
    assert batch.image.is_cuda and batch.image.is_contiguous(memory_format=torch.channels_last)
    on_cuda = decode_on_device(gpu.image, torch.device("cuda"), 32, 36).cpu()
    assert (on_cuda.float() - cpu.image.float()).abs().mean() < 1.0
    if split == "train":
        other_seed, _, _ = gpu_decode_batches(root, split, torch.device("cuda"), seed=100)
        assert (on_cuda.float() - other_seed.image.float()).abs().mean() > 10.0


def test_bad_transform_settings_are_errors(synthetic_root):
    with pytest.raises(ValueError, match="crop_scale"):
        build_imagenet_datasets(synthetic_root, num_classes=3, crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="eval_resize"):
        build_imagenet_datasets(synthetic_root, num_classes=3, image_size=64, eval_resize=32)
    with pytest.raises(ValueError, match=r"data.decode must be one of \['cpu', 'gpu'\], got 'nvjpeg'"):
        build_imagenet_datasets(synthetic_root, num_classes=3, decode="nvjpeg")


# --- configs and workload ---------------------------------------------------------------------------------------

def test_data_root_defaults_to_imagenet_root_env(monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/somewhere/ilsvrc2012")
    cfg = compose_config("+data=imagenet", "+model=resnet50_v2")
    assert cfg.data.root == "/somewhere/ilsvrc2012"
    assert (cfg.data.num_classes, cfg.data.image_size, cfg.data.eval_resize) == (1000, 224, 256)
    assert list(cfg.data.crop_scale) == [0.08, 1.0] and cfg.data.skip_corrupt is False
    monkeypatch.delenv("IMAGENET_ROOT")
    assert compose_config("+data=imagenet").data.root == "datasets/imagenet"


def test_resnet50_config_builds_the_papers_model():
    cfg = compose_config("+data=imagenet", "+model=resnet50_v2")
    workload = ImageNetWorkload(model=cfg.model, data=cfg.data)
    with torch.device("meta"):
        model = workload.build_model()
    assert sum(p.numel() for p in model.parameters()) == 25_549_352


@pytest.fixture()
def smoke_workload(tmp_path) -> ImageNetWorkload:
    cfg = compose_config("+data=imagenet_synthetic", "+model=resnet_v2_tiny",
                         f"data.synthetic.cache_dir={tmp_path}")
    # Exactly as the engine builds it.
    return instantiate({"_target_": "novograd.workloads.imagenet.ImageNetWorkload"},
                       model=cfg.model, data=cfg.data, _recursive_=False)


def test_smoke_workload_end_to_end(smoke_workload, tmp_path):
    torch.manual_seed(0)
    model = smoke_workload.build_model()
    train, eval_sets = smoke_workload.build_datasets()
    assert list(eval_sets) == ["val"]
    val = eval_sets["val"]
    assert Path(train.folder.root).parent.parent == tmp_path
    assert (len(train), len(val), model.fc.out_features) == (4 * 8, 4 * 4, 4)
    batch = smoke_workload.on_device(smoke_workload.collate([train[i] for i in range(6)]))
    images, labels, skipped = batch
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and not skipped.any()
    loss = smoke_workload.loss(model, batch)
    torch.testing.assert_close(loss, F.cross_entropy(model(images), labels) * 6)
    loss.backward()
    model.eval()
    with torch.no_grad():
        val_batch = smoke_workload.on_device(smoke_workload.collate([val[i] for i in range(len(val))]))
        sums = smoke_workload.eval_step(model, val_batch)
    metrics = smoke_workload.eval_metrics({k: v.item() for k, v in sums.items()}, "val")
    assert sums["count"].item() == 16 and 0 <= metrics["top1"] <= 100
    assert metrics["top5"] == 100.0  # 4 classes: every class is in the top 5


def test_top_k_against_hand_computed_ranks():
    logits = torch.tensor([
        [0.1, 0.9, 0.3, 0.2, 0.0, 0.5, 0.4],  # ranks: 1, 5, 6, 2, 3 | 0, 4
        [0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranks: 0, 6, 5, 4, 3 | 2, 1
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranks: 6, 5, 4, 3, 2 | 1, 0
        [0.3, 0.2, 0.1, 0.9, 0.8, 0.7, 0.0],  # ranks: 3, 4, 5, 0, 1 | 2, 6
    ])
    labels = torch.tensor([1, 3, 0, 1])
    # row 0: label top-1; row 1: rank 5 (top-5); row 2: rank 7 (miss); row 3: rank 5 (top-5)
    sums = top_k_correct(logits, labels)
    assert {k: v.item() for k, v in sums.items()} == {"correct_top1": 1, "correct_top5": 3, "count": 4}
    # sums over batches add up to the whole set's, which is what makes distributed evaluation exact
    halves = [top_k_correct(logits[i:i + 2], labels[i:i + 2]) for i in (0, 2)]
    assert {k: sum(h[k].item() for h in halves) for k in sums} == {k: v.item() for k, v in sums.items()}
    # Rows left unscored (unreadable files) count in neither sum: row 1 out leaves rows 0, 2, 3.
    masked = top_k_correct(logits, labels, scored=torch.tensor([True, False, True, True]))
    assert {k: v.item() for k, v in masked.items()} == {"correct_top1": 1, "correct_top5": 2, "count": 3}
    workload = ImageNetWorkload(model={}, data={})
    assert workload.eval_metrics({"correct_top1": 1, "correct_top5": 3, "count": 4}, "val") == {"top1": 25.0, "top5": 75.0}
    assert (workload.primary_metric, workload.metric_goals) == ("top1", {"top1": "max", "top5": "max"})
    assert workload.channels_last  # a convnet: the engine makes model and batches channels-last on CUDA
    with pytest.raises(ValueError, match="empty"):
        workload.eval_metrics({"correct_top1": 0, "correct_top5": 0, "count": 0}, "val")
