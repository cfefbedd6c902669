"""@triton.jit kernels and their launchers, one module per operator family (imported lazily)."""
