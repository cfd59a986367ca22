"""Variational solvers driven by ``pyro.infer.SVI``: RED-Diff, Score Prior, Efficient Score Prior."""
from .red_diff import REDDiff, NonFiniteLossError, WEIGHTINGS

__all__ = ["REDDiff", "NonFiniteLossError", "WEIGHTINGS"]
from .score_prior import ScorePrior, EfficientScorePrior, ess

__all__ += ["ScorePrior", "EfficientScorePrior", "ess"]
