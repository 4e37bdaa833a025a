"""A checkpoint as one plain file: `python -m novograd.export_checkpoint <checkpoint.pt> <output.pt>`.

A sharded run (`trainer.parallelism=fsdp`) keeps its model and optimizer state in a directory of per-rank shards
beside the checkpoint file; the output holds them gathered into full tensors, under the keys an unsharded run's
checkpoint has, so `torch.load(output)["model"]` loads into the bare model with `load_state_dict`. No process group
and no GPU is needed. An unsharded checkpoint is copied as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file: <output_dir>/checkpoints/last.pt, ...")
    parser.add_argument("output", type=Path, help="where to write the plain state")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint} is not a file: give a checkpoint such as <output_dir>/checkpoints/last.pt")
    if args.output.resolve() == args.checkpoint.resolve():
        parser.error("the output must be another file than the checkpoint")

    from novograd.engine.checkpoint import atomic_save, consolidated

    state = consolidated(args.checkpoint)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, args.output)
    print(f"Wrote {args.output}: the state of step {state['progress']['step']}, model and optimizer unsharded.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
