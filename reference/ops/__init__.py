"""Naive float64 reference implementations of the operators cvkernels accelerates.

One module per kernel family (DESIGN.md section 2): ``reference.ops.<family>``.
"""
