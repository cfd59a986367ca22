"""Variational solvers driven by ``pyro.infer.SVI``: RED-Diff, Score Prior, Efficient Score Prior."""
from .red_diff import WEIGHTINGS, NonFiniteLossError, REDDiff
from .score_prior import EfficientScorePrior, ScorePrior, ess

__all__ = ["REDDiff", "NonFiniteLossError", "WEIGHTINGS", "ScorePrior", "EfficientScorePrior", "ess"]
