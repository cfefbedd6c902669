"""The Triton kernels compile for the GPU (sm_90) with the GPU launch parameters, on a machine
without one: scripts/triton_compile_report.py captures the launches on meta tensors and runs
Triton's own compiler (bundled LLVM + ptxas). The interpreter used by the other CPU tests never
sees the GPU path, so this is the only CPU-side check of it (and of register spills)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_nvidia_backend():
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this triton has no NVIDIA backend to compile with")
def test_triton_kernels_compile_for_sm90(tmp_path):
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "triton_compile_report.py"),
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert rows and all(r["ok"] for r in rows)
    names = {r["kernel"].split()[0] for r in rows}
    assert {"_dw_conv_kernel", "_dw_conv_transposed_kernel", "_dw_weight_grad_kernel", "_conv_gemm_kernel",
            "_conv_transposed_gemm_kernel", "_conv_weight_grad_gemm_kernel", "_flash_fwd_kernel", "_flash_bwd_kv_kernel",
            "_flash_bwd_q_kernel", "_flash_bwd_delta_kernel", "_swin_fwd_kernel", "_swin_bwd_kernel",
            "_step_kernel", "_x0_abs_kernel"} <= names
