"""Input pipelines against what a GPU consumes: per-core throughput of each workload's data path.

For each of the four workloads, the training path exactly as the engine runs it (the workload's datasets, batch
plan, per-sample seeding and collate, through `novograd.engine.data.build_loader`), and the evaluation path where
it differs, are timed in one process on one thread (`num_workers=0`: one core's worth, what one DataLoader worker
gives), in the workload's unit. Dividing the published per-GPU training throughput of each model (NVIDIA
DeepLearningExamples, mixed precision, 8-GPU figures / 8; `PUBLISHED` names each source) by it gives the cores
per GPU the loader needs.

Sizes are the paper's: 224 crops of 500x375 JPEGs (ILSVRC2012's typical size; smooth multi-scale noise written at
quality 90, ~70 KB, where the synthetic twin's pure-noise JPEGs would decode slower than photographs do);
LibriSpeech utterances of 10-15 s (the corpus averages 12.3 s) with speed perturbation; Transformer-XL windows of
the model's tgt_len; WMT14 at the synthetic twin's sentence lengths (3-12 words: the text paths cost microseconds
per sentence, far from the GPU's need either way).

ImageNet is also timed through the path the loader ran before the uint8 batches (PIL decode, PIL crop, float
conversion and normalisation on the CPU, `TodaysImageNet`), interleaved with the new one over `--repeats` runs;
the ratio of medians is the speed-up per core (goal: >= 1.8).

    python scripts/bench_data.py [--seconds 4] [--repeats 3] [--output results/bench]

Writes `data.json` and `data.md` under `--output`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.imagenet import IMAGENET_MEAN, IMAGENET_STD, LabelledImage
from novograd.engine.compose import compose_config
from novograd.engine.data import EvalBatchSampler, PlannedBatchSampler, build_loader
from novograd.workload import Workload

#: Per-GPU training throughput published by NVIDIA DeepLearningExamples (PyTorch, mixed precision; the 8-GPU
#: figure of each README's "Training performance" tables divided by 8), in each workload's unit.
PUBLISHED = {
    "resnet50_imagenet": {
        "source": "DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md (ResNet-50 v1.5)",
        "DGX-1 V100 16GB": 8322 / 8, "DGX A100 80GB": 16621 / 8},
    "jasper_librispeech": {
        "source": "DeepLearningExamples PyTorch/SpeechRecognition/Jasper/README.md (Jasper 10x5, sequences/s; "
                  "V100: batch 16/GPU, A100: batch 64/GPU)",
        "DGX-1 V100 16GB": 193.89 / 8, "DGX A100 80GB": 547.91 / 8},
    "transformer_big_wmt14": {
        "source": "DeepLearningExamples PyTorch/Translation/Transformer/README.md (transformer_wmt_en_de_big_t2t; "
                  "fairseq's ntokens: target tokens)",
        "DGX-1 V100 16GB": 214656 / 8, "DGX A100 40GB": 551599 / 8},
    "transformer_xl_wikitext103": {
        "source": "DeepLearningExamples PyTorch/LanguageModeling/Transformer-XL/README.md (base model, tokens/s)",
        "DGX-1 V100 16GB": 170532 / 8, "DGX A100 40GB": 449890 / 8},
}


def images(batch: LabelledImage) -> float:
    return float(len(batch.label))


#: name: (unit, overrides composing the workload at the paper's sizes, units in a batch, evaluation set timed or None)
WORKLOADS: dict[str, tuple[str, list[str], Callable[[Any], float], str | None]] = {
    "resnet50_imagenet": ("images", ["experiment=table1/novograd_100ep", "trainer.batch_size=64",
                                     "trainer.micro_batch_size=16", "trainer.eval_micro_batch_size=16"], images, "val"),
    "jasper_librispeech": (
        "utterances",
        ["experiment=table4/novograd", "data=librispeech_synthetic", "data.synthetic.num_train=64",
         "data.synthetic.num_eval=16", "+data.synthetic.smoke_seconds=[10.0,15.0]", "trainer.batch_size=64",
         "trainer.micro_batch_size=16", "trainer.eval_micro_batch_size=4"],
        lambda batch: float(len(batch["feature_lengths"])), "dev_clean"),
    "transformer_big_wmt14": (
        "target tokens",
        ["experiment=table7/novograd", "data=wmt14_synthetic", "data.synthetic.num_train=4000",
         "trainer.batch_size=16384", "trainer.micro_batch_size=4096"],
        lambda batch: float(batch["ntokens"]), None),
    "transformer_xl_wikitext103": (
        "tokens",
        ["experiment=table6/novograd_12b", "data=wikitext103_synthetic",
         "data.synthetic.num_train_tokens=200000"],
        lambda batch: float(batch["inputs"].numel()), None),
}


def write_photo_folder(root: Path, num_classes: int = 2, per_class: int = 32, seed: int = 0) -> Path:
    """An ImageFolder (`train/`, `val/`) of 500x375 JPEGs with a photograph's statistics where decoding cost is
    concerned: smooth structure at several scales plus mild noise, quality 90 (~70 KB each)."""
    rng = np.random.default_rng(seed)
    height, width = 375, 500
    for split in ("train", "val"):
        for class_index in range(num_classes):
            folder = root / split / f"n{class_index:08d}"
            folder.mkdir(parents=True)
            for image_index in range(per_class):
                pixels = rng.normal(128, 6, size=(height, width, 3))
                for scale, amplitude in ((8, 60), (32, 40), (125, 30)):
                    coarse = torch.from_numpy(rng.normal(size=(3, height // scale + 2, width // scale + 2)))[None]
                    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")
                    pixels += amplitude * smooth[0].permute(1, 2, 0).numpy()
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{image_index}.JPEG", quality=90)
    return root


class TodaysImageNet(Dataset):
    """ImageNet as data/imagenet.py read it before the uint8 batches (the baseline of the ratio): PIL decode, the
    crop on the PIL image, float conversion and normalisation in the loader."""

    def __init__(self, root: Path, train: bool, image_size: int = 224, eval_resize: int = 256) -> None:
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(str(root), transform=todays_transform(train, image_size, eval_resize),
                                  loader=pil_rgb)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> LabelledImage:
        image, label = self.folder[index]
        return LabelledImage(image, label, False)


def todays_transform(train: bool, image_size: int = 224,
                     eval_resize: int = 256) -> Callable[[Image.Image], torch.Tensor]:
    """The transform the loader ran before it produced uint8 batches: crop and resize on the PIL image, then the
    float conversion and normalisation on the CPU."""
    from torchvision.transforms import v2

    crop = ([v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            if train else [v2.Resize(eval_resize, antialias=True), v2.CenterCrop(image_size)])
    return v2.Compose([*crop, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()])


def pil_rgb(path: str | Path) -> Image.Image:
    """PIL's decode of `path`, in RGB: the decode before the uint8 batches."""
    with Image.open(path) as image:
        return image.convert("RGB")


def pil_resize_agreement(folder: Path, images: int = 8, crops: int = 25) -> dict[str, float]:
    """How far the uint8 path's random-resized crops are from PIL's on the same decode and the same crop boxes
    (docs/imagenet.md): the largest difference in levels, the mean and largest fraction of values differing, over
    `crops` crops of each of the first `images` JPEGs under `folder`; and PIL's time per crop over torch's."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    crop = v2.RandomResizedCrop(224, antialias=True)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    largest, fractions, seconds = 0, [], {"torch": 0.0, "pil": 0.0}
    for path in sorted(folder.rglob("*.JPEG"))[:images]:
        pil = pil_rgb(path)
        tensor = F.pil_to_tensor(pil)  # the same pixels as the uint8 path's decode (tests/test_imagenet.py)
        for _ in range(crops):
            box = crop.make_params([tensor])
            started = time.perf_counter()
            ours = F.resized_crop(tensor, **box, size=[224, 224], antialias=True)
            middle = time.perf_counter()
            theirs = F.pil_to_tensor(F.resized_crop(pil, **box, size=[224, 224], antialias=True))
            seconds["torch"] += middle - started
            seconds["pil"] += time.perf_counter() - middle
            difference = (ours.int() - theirs.int()).abs()
            largest = max(largest, int(difference.max()))
            fractions.append(float((difference > 0).float().mean()))
    torch.set_rng_state(generator_state)
    return {"max_level_difference": largest, "mean_fraction_differing": statistics.fmean(fractions),
            "max_fraction_differing": max(fractions), "crops": len(fractions),
            "pil_over_torch_resize_time": seconds["pil"] / seconds["torch"]}


def per_second(loader: Any, count: Callable[[Any], float], seconds: float, restart: Callable[[int], None]) -> float:
    """Units per second over at least `seconds` of `loader`'s batches (passes repeated, each told its epoch by
    `restart`), the first batch (start-up) not timed."""
    units, elapsed, epoch = 0.0, 0.0, 0
    while elapsed < seconds:
        restart(epoch)
        iterator = iter(loader)
        next(iterator)
        start = time.perf_counter()
        for batch in iterator:
            units += count(batch)
        elapsed += time.perf_counter() - start
        epoch += 1
    return units / elapsed


def training_rate(workload: Workload, train_set: Dataset, cfg: Any, count: Callable[[Any], float],
                  seconds: float) -> float:
    """Units/s of the engine's training path over `train_set` (the workload's plan, seeding and collate)."""
    plan = workload.batch_plan(train_set, cfg.trainer.batch_size, cfg.trainer.micro_batch_size, cfg.seed)
    sampler = PlannedBatchSampler(plan, rank=0, world_size=1)
    loader = build_loader(train_set, sampler, workload.collate, num_workers=0, pin_memory=False, seed=cfg.seed)
    return per_second(loader, count, seconds, sampler.set_position)


def evaluation_rate(workload: Workload, eval_set: Dataset, batch_size: int, count: Callable[[Any], float],
                    seconds: float) -> float:
    sampler = EvalBatchSampler(len(eval_set), batch_size, 0, 1, getattr(eval_set, "lengths", None))  # type: ignore[arg-type]
    loader = build_loader(eval_set, sampler, workload.collate, num_workers=0, pin_memory=False, seed=0)
    return per_second(loader, count, seconds, lambda epoch: None)


def bench_workload(name: str, tmp: Path, seconds: float, repeats: int) -> dict[str, Any]:
    from hydra.utils import instantiate

    unit, overrides, count, eval_name = WORKLOADS[name]
    if name == "resnet50_imagenet":
        photos = write_photo_folder(tmp / "photos")
        overrides = [*overrides, f"data.root={photos}", "data.num_classes=2"]
    cfg = compose_config(overrides)
    workload: Workload = instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False)
    train_set, eval_sets = workload.build_datasets()
    eval_batch = cfg.trainer.get("eval_micro_batch_size") or cfg.trainer.micro_batch_size
    result: dict[str, Any] = {"unit": unit}
    if name == "resnet50_imagenet":  # new and old interleaved, alternating which goes first
        runs: dict[str, list[float]] = {key: [] for key in ("train", "train_before", "eval", "eval_before")}
        before = {"train": TodaysImageNet(photos / "train", train=True), "eval": TodaysImageNet(photos / "val", False)}
        for repeat in range(repeats):
            for key in ("train", "train_before") if repeat % 2 == 0 else ("train_before", "train"):
                data = train_set if key == "train" else before["train"]
                runs[key].append(training_rate(workload, data, cfg, count, seconds))
            for key in ("eval", "eval_before") if repeat % 2 == 0 else ("eval_before", "eval"):
                data = eval_sets[eval_name] if key == "eval" else before["eval"]
                runs[key].append(evaluation_rate(workload, data, eval_batch, count, seconds))
        medians = {key: statistics.median(values) for key, values in runs.items()}
        result |= {"train_per_core": medians["train"], "eval_per_core": medians["eval"],
                   "before": {"train_per_core": medians["train_before"], "eval_per_core": medians["eval_before"]},
                   "speedup": {"train": medians["train"] / medians["train_before"],
                               "eval": medians["eval"] / medians["eval_before"]},
                   "runs": runs, "pil_agreement": pil_resize_agreement(photos / "train")}
    else:
        result["train_per_core"] = statistics.median(
            training_rate(workload, train_set, cfg, count, seconds) for _ in range(repeats))
        if eval_name is not None:
            result["eval_per_core"] = statistics.median(
                evaluation_rate(workload, eval_sets[eval_name], eval_batch, count, seconds) for _ in range(repeats))
    published = PUBLISHED[name]
    result["published_per_gpu"] = published
    result["cores_per_gpu"] = {machine: rate / result["train_per_core"]
                               for machine, rate in published.items() if machine != "source"}
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torchvision

    return f"{model}, torch {torch.__version__}, torchvision {torchvision.__version__}, one thread"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}", "",
             "| workload | unit | training / core | evaluation / core | published per GPU | cores per GPU |",
             "|---|---|---:|---:|---|---|"]
    for name, row in results["workloads"].items():
        published = ", ".join(f"{machine} {rate:,.0f}" for machine, rate in row["published_per_gpu"].items()
                              if machine != "source")
        cores = ", ".join(f"{machine} {value:.2g}" for machine, value in row["cores_per_gpu"].items())
        evaluation = f"{row['eval_per_core']:,.0f}" if "eval_per_core" in row else "as training"
        lines.append(f"| {name} | {row['unit']} | {row['train_per_core']:,.0f} | {evaluation} | {published} | "
                     f"{cores} |")
    imagenet = results["workloads"]["resnet50_imagenet"]
    lines += ["", f"ImageNet, uint8 path against the path before it (same run, medians of interleaved runs): "
              f"training {imagenet['speedup']['train']:.2f}x ({imagenet['before']['train_per_core']:,.0f} -> "
              f"{imagenet['train_per_core']:,.0f} images/s per core), evaluation {imagenet['speedup']['eval']:.2f}x "
              f"({imagenet['before']['eval_per_core']:,.0f} -> {imagenet['eval_per_core']:,.0f}).", ""]
    agreement = imagenet["pil_agreement"]
    lines += [f"uint8 resize against PIL's, same decode and boxes ({agreement['crops']} crops): at most "
              f"{agreement['max_level_difference']} level apart, {agreement['mean_fraction_differing']:.1%} of the "
              f"values differing on average ({agreement['max_fraction_differing']:.1%} at most); PIL's resize "
              f"takes {agreement['pil_over_torch_resize_time']:.1f}x torch's.", ""]
    lines += ["Sources of the published figures:"]
    lines += [f"- {name}: {row['published_per_gpu']['source']}" for name, row in results["workloads"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement (at least)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (median)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--output", type=Path, default=Path("results/bench"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # as in a DataLoader worker: one core's worth
    results: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "repeats": args.repeats,
                               "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            results["workloads"][name] = row = bench_workload(name, Path(tmp), args.seconds, args.repeats)
            print(name, json.dumps({k: v for k, v in row.items() if k not in ("runs", "published_per_gpu")}))
    if set(args.workloads) != set(WORKLOADS):  # data.json and data.md always describe the same, whole run
        print(f"Measured {', '.join(args.workloads)} only: {args.output} is left as it was.")
        return
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "data.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "data.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
