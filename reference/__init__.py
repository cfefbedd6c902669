"""Pure-PyTorch oracles for cvkernels: naive, readable, float64-capable.

Nothing under reference/ imports cvkernels: these are the independent references the
kernels are tested against (DESIGN.md section 5).
"""
