"""Pyro generative models: the diffusion prior, measurements, operators and exact Gaussian mixtures."""
from .prior import DiffusionPrior
from .measurement import GaussianMeasurement
from .gmm import GaussianMixture, GMMDenoiser, gmm_benchmark_problem, gaussian_check_problem

__all__ = ["DiffusionPrior", "GaussianMeasurement", "GaussianMixture", "GMMDenoiser",
           "gmm_benchmark_problem", "gaussian_check_problem"]
