"""python -m cvkernels info / check / bench --list run and report."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cvkernels", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_info_lists_families():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    assert "batch_norm_relu" in out.stdout and "torch" in out.stdout


def test_check_passes_and_prints_a_table():
    out = _run("check", "batch_norm_relu")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout and " 0 failed" in out.stdout


def test_check_rejects_unknown_family():
    out = _run("check", "no_such_family")
    assert out.returncode != 0


def test_bench_lists_cases():
    out = _run("bench", "--list")
    assert out.returncode == 0, out.stderr
    assert "bn_add_relu" in out.stdout
