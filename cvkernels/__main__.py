"""python -m cvkernels {info | check | bench}.

  info    versions, devices, compiled backends, and the implementation each family would use
  check   parity of every kernel against its float64 reference on the current device
          (table of max errors, PASS/FAIL; exit code 1 on any failure)
  bench   benchmarks against the baselines (see cvkernels/bench; `bench --help`)

Without a GPU, Triton kernels run through Triton's interpreter (TRITON_INTERPRET=1 is set
here before triton is imported, unless the environment already says otherwise).
"""
import argparse
import os
import sys


def _prepare_triton():
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def info():
    import platform

    import torch

    import cvkernels
    from cvkernels import _dispatch, _extension
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"cvkernels {cvkernels.__version__}")
    print(f"python    {platform.python_version()}")
    print(f"torch     {torch.__version__} (cuda {torch.version.cuda})")
    print(f"triton    {triton_version} (interpreter: {_dispatch.triton_interpreting()})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"device    cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                  f"sm_{p.major}{p.minor}")
    else:
        print("device    cpu only (Triton kernels run interpreted; GPU timings need a GPU)")
    if _extension.has_ops():
        print(f"compiled  {_extension.library_path()} (CUDA kernels: {_extension.has_cuda_ops()})")
    else:
        print(f"compiled  no ({_extension.load_error()})")
    print("\nfamily               cpu        cuda")
    for family, choice in _dispatch.describe().items():
        print(f"{family:<20} {choice['cpu']:<10} {choice['cuda']}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m cvkernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["info", "check", "bench"])
    args, rest = parser.parse_known_args(argv[:1])
    _prepare_triton()
    if args.command == "info":
        return info()
    if args.command == "check":
        from cvkernels.check import main as check_main
        return check_main(argv[1:])
    from cvkernels.bench import main as bench_main
    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
