"""Transformer-big on WMT14 en-de (Table 7): token-budget batches, label-smoothed loss, beam search, BLEU.

Batches: fairseq's `batch_by_size` made independent of the layout (`TokenBudgetPlan`): a step holds up to
`trainer.batch_size` source + target tokens (490K in the paper), cut into micro-batches of up to
`trainer.micro_batch_size` padded tokens of sentences of similar length. Loss: label-smoothed cross-entropy (0.1)
summed over target tokens; the engine divides by the step's target tokens, so accumulation normalises per token
over the whole step.
Evaluation: at every evaluation, loss and perplexity on newstest2013 (`valid_loss`, `valid_ppl`) and its BLEU
(`valid_bleu`, on the first `bleu_max_sentences` sentences if set); at the end also newstest2014 in its two forms:
the 2737-sentence set `sacrebleu -t wmt14 -l en-de` scores, which the authors translated and scored (the eval set
`test`: `sacrebleu` and `tokenized_bleu`, the paper's columns), and the full 3003 sentences (`test_full`:
`sacrebleu_full` and `tokenized_bleu_full`, the set of fairseq's and Tensor2Tensor's tokenized BLEU). Hypotheses are
decoded by batched beam search (beam 4, GNMT length penalty 0.6) and written, in the order of the set, to
`<output_dir>/hypotheses/<set>.txt` (the latest evaluation's), with its scores and SacreBLEU's signatures in
`<set>.bleu.json`. BLEU is computed from statistics summed over batches and ranks,
which is exactly the corpus score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from data.wmt14 import BOS_ID, EOS_ID, PAD_ID, build_wmt14_datasets, read_meta
from data.wmt14 import collate as collate_pairs
from models.beam_search import beam_search
from models.transformer import label_smoothed_nll_loss
from novograd.engine import distributed
from novograd.engine.plans import BatchPlan, TokenBudgetPlan
from novograd.metrics.bleu import bleu_from_statistics, bleu_signature, bleu_statistics, bleu_tokenizer
from novograd.workload import Workload

Batch = dict[str, Any]
# The evaluation sets decoded only at the end of training -> the suffix of their metric names. `test` is the
# paper's Table 7 (sacrebleu, tokenized_bleu); `test_full` the full newstest2014 (sacrebleu_full, ...).
FINAL_SETS = {"test": "", "test_full": "_full"}


class Indexed(Dataset):
    """A dataset whose samples carry their index: evaluation lines hypotheses up with the references."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.lengths = dataset.src_lengths + dataset.tgt_lengths  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class WMT14Workload(Workload):
    """Translation on WMT14 en-de, or on its synthetic twin when `data.synthetic` is set.

    Args:
        model: the model config (configs/model/transformer*.yaml); vocabulary and special ids come from the data.
        data: the data config (configs/data/wmt14.yaml).
        label_smoothing: epsilon of the label-smoothed loss (0.1 [O]).
        beam_size, length_penalty, max_len_a, max_len_b: beam search (4, 0.6, 1, 50 [O]).
        bleu_max_sentences: decode only this many sentences of each set during training (None: all); the final
            evaluation of the test sets always decodes every sentence.
        tokenized_bleu: the tokenized-BLEU procedure, "t2t" (Tensor2Tensor's get_ende_bleu.sh, the default) or
            "fairseq" (fairseq's WMT14 tokenization then compound_split_bleu.sh); novograd/metrics/bleu.py.
    """

    name = "wmt14"
    metric_goals = {"valid_bleu": "max", "valid_loss": "min", "sacrebleu": "max", "tokenized_bleu": "max",
                    "sacrebleu_full": "max", "tokenized_bleu_full": "max"}
    primary_metric = "valid_bleu"
    paper_columns = ("sacrebleu", "tokenized_bleu")  # Table 7: newstest2014 as the authors scored it
    batch_is_a_count = False  # trainer.batch_size is a token budget per step (TokenBudgetPlan)
    count_unit = "target tokens"

    def __init__(
        self, model: Mapping[str, Any], data: Mapping[str, Any], label_smoothing: float = 0.1, beam_size: int = 4,
        length_penalty: float = 0.6, max_len_a: float = 1.0, max_len_b: int = 50,
        bleu_max_sentences: int | None = None, tokenized_bleu: str = "t2t",
    ) -> None:
        self.model_cfg = model
        self.data_cfg = data
        self.label_smoothing = label_smoothing
        self.beam = {"beam_size": beam_size, "alpha": length_penalty, "max_len_a": max_len_a, "max_len_b": max_len_b}
        self.bleu_max_sentences = bleu_max_sentences
        bleu_tokenizer(tokenized_bleu)  # an unknown procedure fails here, not at the end of training
        self.tokenized_bleu = tokenized_bleu
        self._final = False
        self._stats: dict[str, Any] = {"nll": 0.0, "tokens": 0.0}
        self._hypotheses: list[tuple[int, str]] = []
        self._sets: dict[str, Any] = {}
        self._current_set = ""

    def build_model(self) -> nn.Module:
        from hydra.utils import instantiate

        return instantiate(self.model_cfg, vocab_size=self.data_cfg["vocab_size"], pad_id=PAD_ID, bos_id=BOS_ID,
                           eos_id=EOS_ID)

    @classmethod
    def check_data(cls, data: Mapping[str, Any]) -> None:
        if not data.get("synthetic"):
            read_meta(data["root"])

    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        data = self.data_cfg
        root = data["root"]
        if data.get("synthetic"):
            from data.synthetic_wmt14 import make_synthetic_wmt14

            root = make_synthetic_wmt14(vocab_size=data["vocab_size"], **data["synthetic"])
        train, eval_sets = build_wmt14_datasets(root, data["vocab_size"], data["eval_sets"], data["max_len"],
                                                data["max_len_ratio"])
        self._sets = eval_sets
        return train, {name: Indexed(dataset) for name, dataset in eval_sets.items()}

    def batch_plan(self, train_set: Dataset, batch_size: int, micro_batch_size: int, seed: int) -> BatchPlan:
        # Planning chunks of 1/32 of a step: a step mixes ~32 length buckets, whatever the micro-batch size.
        return TokenBudgetPlan(train_set.src_lengths, train_set.tgt_lengths,  # type: ignore[attr-defined]
                               batch_size, micro_batch_size, seed, chunk_tokens=max(1, batch_size // 32))

    def collate(self, samples: list[Any]) -> Batch:
        if isinstance(samples[0][0], int):  # evaluation: (index, (src, tgt))
            return collate_pairs([sample for _, sample in samples]) | {"indices": [index for index, _ in samples]}
        return collate_pairs(samples)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch["src"], batch["tgt_input"])
        loss, nll = label_smoothed_nll_loss(logits, batch["target"], PAD_ID, self.label_smoothing)
        self._stats["nll"] += nll.detach()
        self._stats["tokens"] += batch["ntokens"]
        return loss

    def pop_train_stats(self) -> dict[str, float]:
        stats = {name: float(value) for name, value in self._stats.items()}
        self._stats = dict.fromkeys(self._stats, 0.0)
        return stats

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        nll = sums["nll"] / max(sums["tokens"], 1.0)
        return {"nll_loss": nll, "ppl": math.exp(min(nll, 50.0))}

    def begin_evaluation(self, eval_set: str, final: bool) -> bool:
        self._final, self._current_set, self._hypotheses = final, eval_set, []
        return final or eval_set not in FINAL_SETS  # the test sets' BLEU is the paper's final number only

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch["src"], batch["tgt_input"])
        _, nll = label_smoothed_nll_loss(logits, batch["target"], PAD_ID, 0.0)
        stats = {"nll": nll, "tokens": batch["ntokens"].to(torch.float64)}
        limit = None if self._final else self.bleu_max_sentences
        rows = [row for row, index in enumerate(batch["indices"]) if limit is None or index < limit]
        if rows:
            dataset = self._sets[self._current_set]
            hypotheses = [dataset.tokenizer.decode(ids) for ids in beam_search(model, batch["src"][rows], **self.beam)]
            references = [dataset.references[batch["indices"][row]] for row in rows]
            self._hypotheses += [(batch["indices"][row], text) for row, text in zip(rows, hypotheses)]
            for name, tokenized in (("bleu", False), ("tokenized_bleu", True)):
                statistics = bleu_statistics(hypotheses, references, tokenized, procedure=self.tokenized_bleu)
                for position, value in enumerate(statistics):
                    stats[f"{name}_{position}"] = torch.tensor(float(value))
        return stats

    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        nll = totals["nll"] / totals["tokens"]
        metrics |= {f"{eval_set}_loss": nll, f"{eval_set}_ppl": math.exp(min(nll, 50.0))}
        bleu, tokenized = _statistics(totals, "bleu"), _statistics(totals, "tokenized_bleu")
        if bleu:
            if eval_set in FINAL_SETS:
                names = (f"sacrebleu{FINAL_SETS[eval_set]}", f"tokenized_bleu{FINAL_SETS[eval_set]}")
            else:
                names = (f"{eval_set}_bleu", f"{eval_set}_tokenized_bleu")
            metrics[names[0]] = bleu_from_statistics(bleu)
            metrics[names[1]] = bleu_from_statistics(tokenized, tokenized=True)
        self._write_hypotheses(eval_set, metrics)
        return metrics

    def _write_hypotheses(self, eval_set: str, metrics: dict[str, float]) -> None:
        """Every rank's hypotheses of this set, in the set's order, into one file on rank 0; beside it the set's
        scores with SacreBLEU's signatures (`<set>.bleu.json`), the record of how they were computed."""
        gathered = distributed.gather_objects(self._hypotheses)
        self._hypotheses = []
        lines = sorted(pair for shard in gathered for pair in shard)
        if lines and self.output_dir is not None:  # set on the main rank only
            directory = Path(self.output_dir) / "hypotheses"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{eval_set}.txt").write_text("".join(text + "\n" for _, text in lines))
            record = {"sentences": len(lines), "metrics": metrics,
                      "signature": bleu_signature(), "tokenized_signature": bleu_signature(tokenized=True),
                      "tokenized_procedure": self.tokenized_bleu}
            (directory / f"{eval_set}.bleu.json").write_text(json.dumps(record, indent=2) + "\n")


def _statistics(totals: dict[str, float], name: str) -> list[float]:
    """The BLEU statistics `eval_step` summed under `<name>_0`, `<name>_1`, ..., in order."""
    values = []
    while f"{name}_{len(values)}" in totals:
        values.append(totals[f"{name}_{len(values)}"])
    return values
