"""Builds cvkernels._C.

C++ CPU kernels (csrc/cvkernels.cpp, csrc/cpu/*.cpp) are always built. CUDA kernels
(csrc/cuda/*.cu and their csrc/cuda/*_binding.cpp) are built when a CUDA torch and nvcc
are present:

    CVK_BUILD_CUDA=auto|0|1   auto (default): build CUDA when torch.version.cuda and nvcc exist
    CVK_CUDA_ARCHS="9.0"      passed on as TORCH_CUDA_ARCH_LIST when that is not set
    CVK_NO_EXTENSION=1        build no extension at all (pure Triton/torch install)

Always install with --no-build-isolation so the extension is built against the torch that
is installed (build isolation would pull a different, multi-GB torch).
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    flag = os.environ.get("CVK_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        return False
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "yes", "on"):
        if not available:
            raise RuntimeError(
                "CVK_BUILD_CUDA=1 but this torch has no CUDA (torch.version.cuda=%r) "
                "or nvcc was not found (CUDA_HOME=%r)" % (torch.version.cuda, CUDA_HOME))
        return True
    return available


def _extensions():
    if os.environ.get("CVK_NO_EXTENSION", "0") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                  + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    define_macros = []
    extra_link = ["-fopenmp"]
    if _want_cuda():
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and os.environ.get("CVK_CUDA_ARCHS"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["CVK_CUDA_ARCHS"]
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_binding.cpp")))
        define_macros.append(("CVK_WITH_CUDA", None))
        ext = CUDAExtension(
            "cvkernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            extra_link_args=extra_link)
    else:
        ext = CppExtension("cvkernels._C", sources, include_dirs=include_dirs,
                           define_macros=define_macros, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=extra_link)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["cvkernels", "cvkernels.*", "reference", "reference.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
