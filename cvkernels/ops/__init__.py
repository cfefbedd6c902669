"""Registered ops, autograd wrappers and functional APIs, one module per operator family."""
