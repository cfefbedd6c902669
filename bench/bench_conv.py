#!/usr/bin/env python3
"""Depthwise, grouped, dilated and transposed convolutions against cuDNN (eager) and torch.compile.

    python bench/bench_conv.py [--out DIR] [--quick] [--dtype fp16,bf16] [--mode fwd,fwd+bwd] ...

The same as ``python -m cvkernels bench conv ...``; every option of the harness works
(see ``--help``). Results: bench/results/<date>-<device>.csv, .json and -conv.png.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cvkernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["conv"] + sys.argv[1:]))
