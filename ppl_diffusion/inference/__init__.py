"""Solvers, grouped by family: guides (explicit approximations), variational (SVI), kernels (MCMC),
smc (sequential Monte Carlo). Everything a solver needs comes through :class:`Problem`."""
from .problem import Problem, LinearGaussian
from .sampler import reverse_diffusion, Hook, StepState, DivergenceError
from .analytic_variance import AnalyticVariance

__all__ = ["Problem", "LinearGaussian", "reverse_diffusion", "Hook", "StepState", "DivergenceError",
           "AnalyticVariance"]
