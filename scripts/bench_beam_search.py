"""Beam-search decoding speed: sentences per second with the encoder's keys and values expanded once per beam (the
search of models/beam_search.py) against the earlier search that re-gathered them, and the source mask, with the
self-attention cache on every step.

Both decode the same random sources with the same randomly initialised Transformer (the big model's layout at a
width that runs on a CPU by default) and must give the same hypotheses; runs alternate between the two and the
ratio of median rates is printed. Random weights rarely emit EOS early, so sentences run close to their length
limit (source length + `--max-len-b`), as long sentences do in real decoding.

    python scripts/bench_beam_search.py [--d-model 512] [--layers 6] [--sentences 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from models.beam_search import beam_search  # noqa: E402
from models.transformer import DecoderCache, Transformer  # noqa: E402


def regather_everything(cache: DecoderCache, beams: torch.Tensor) -> None:
    """The earlier behaviour: every step also index_selects the encoder keys/values and the source mask."""
    index = (torch.arange(beams.size(0), device=beams.device)[:, None] * cache.beam_size + beams).view(-1)
    cache.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache.memory_kv]
    cache.src_mask = cache.src_mask.index_select(0, index)
    cache.self_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache.self_kv]


def sentences_per_second(model: Transformer, sources: torch.Tensor, args: argparse.Namespace) -> tuple[float, list]:
    if sources.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    hypotheses = beam_search(model, sources, beam_size=args.beam, max_len_a=1.0, max_len_b=args.max_len_b)
    if sources.is_cuda:
        torch.cuda.synchronize()
    return len(sources) / (time.perf_counter() - start), hypotheses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--source-len", type=int, default=25)
    parser.add_argument("--max-len-b", type=int, default=10, help="tokens allowed beyond the source length")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Transformer(args.vocab, d_model=args.d_model, d_ff=4 * args.d_model, num_heads=args.d_model // 64,
                        encoder_layers=args.layers, decoder_layers=args.layers)
    model = model.to(args.device, getattr(torch, args.dtype)).eval()
    sources = torch.randint(4, args.vocab, (args.sentences, args.source_len), device=args.device)
    select_beams = DecoderCache.select_beams
    rates: dict[str, list[float]] = {"expanded once": [], "re-gathered each step": []}
    outputs = {}
    sentences_per_second(model, sources[:2], args)  # warm-up
    for repeat in range(args.repeats):
        order = list(rates) if repeat % 2 == 0 else list(rates)[::-1]
        for name in order:
            DecoderCache.select_beams = select_beams if name == "expanded once" else regather_everything
            rate, outputs[name] = sentences_per_second(model, sources, args)
            rates[name].append(rate)
    DecoderCache.select_beams = select_beams
    if outputs["expanded once"] != outputs["re-gathered each step"]:
        raise AssertionError("the two searches gave different hypotheses")
    lengths = [len(h) for h in outputs["expanded once"]]
    print(f"Transformer d_model {args.d_model}, {args.layers}+{args.layers} layers, vocab {args.vocab}, "
          f"{args.device} {args.dtype}; {args.sentences} sentences of {args.source_len} tokens, beam {args.beam}, "
          f"hypotheses of {statistics.mean(lengths):.1f} tokens on average (identical in both)")
    for name, values in rates.items():
        print(f"  {name:>22}: {statistics.median(values):8.2f} sentences/s (median of {args.repeats})")
    ratio = statistics.median(rates["expanded once"]) / statistics.median(rates["re-gathered each step"])
    print(f"  speed-up: {ratio:.3f}x")


if __name__ == "__main__":
    main()
