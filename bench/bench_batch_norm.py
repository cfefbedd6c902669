#!/usr/bin/env python3
"""Fused BatchNorm(+add)+ReLU against nn.BatchNorm2d + ReLU (eager) and torch.compile of it.

    python bench/bench_batch_norm.py [--out DIR] [--quick] [--dtype fp16,bf16] [--mode fwd,fwd+bwd] ...

The same as ``python -m cvkernels bench batch_norm ...``; every option of the harness works
(see ``--help``). Results: bench/results/<date>-<device>.csv, .json and -batch_norm.png.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cvkernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["batch_norm"] + sys.argv[1:]))
