#!/usr/bin/env python
"""Entry point the launchers run: `deepspeed ... launch/train.py --config X [--set a.b=c] [--resume latest]`.

Same as `jest-ds train ...`. The deepspeed launcher appends `--local_rank=N`; the CLI accepts it (and
ignores it: LOCAL_RANK is read from the environment) before or after the `train` arguments.
torchrun runs this script unchanged.
"""
import sys

from jest_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
