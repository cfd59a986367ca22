"""Explicit-approximation solvers as Pyro guides (one short file per method)."""
from .base import DiffusionGuide

__all__ = ["DiffusionGuide"]
