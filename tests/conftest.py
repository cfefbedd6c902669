"""Test set-up: Triton through its interpreter on CPU, per-test seeding, device fixtures.

TRITON_INTERPRET must be set before triton is imported: this file is imported by pytest before
any test module, so on a machine without CUDA every @triton.jit kernel runs interpreted.
"""
import hashlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# the device Triton kernels run on: the GPU when there is one, else the CPU interpreter
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh but reproducible random inputs: the seed is derived from the test's id."""
    seed = int.from_bytes(hashlib.sha1(request.node.nodeid.encode()).digest()[:4], "little")
    torch.manual_seed(seed)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def kernel_device():
    return KERNEL_DEVICE


def pytest_report_header(config):
    import cvkernels
    return (f"cvkernels: torch {torch.__version__}, cuda={torch.cuda.is_available()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}, compiled ops={cvkernels.has_ops()}"
            + ("" if cvkernels.has_ops() else f" ({cvkernels.load_error()})"))
