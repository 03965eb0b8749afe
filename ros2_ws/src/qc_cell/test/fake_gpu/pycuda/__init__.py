"""Fake pycuda (see ../README.md)."""
