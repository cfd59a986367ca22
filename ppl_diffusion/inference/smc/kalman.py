"""Elementwise Gaussian conditioning (the scalar Kalman update) shared by the SMC proposals.

MCGDiff's fully adapted move and FPS's filter both draw each observed spectral coordinate from a
prior ``N(m, v)`` conditioned on one linear-Gaussian pseudo-observation ``o ~ N(h x, r)``: the
measurement update of the Kalman filter (Kalman 1960; Särkkä, *Bayesian Filtering and Smoothing*,
2013, Ch. 4, with a scalar state), written in the equivalent form of an observation
``o / h`` of ``x`` itself with variance ``r / h^2``::

    w = r / h^2,   K = v / (v + w),   mean = K (o / h) + (1 - K) m,   var = w K.
"""
from __future__ import annotations

__all__ = ["gaussian_condition"]


def gaussian_condition(mean, var, obs, obs_var, gain=None):
    """``(mean, var)`` of ``x ~ N(mean, var)`` given ``obs ~ N(gain * x, obs_var)``, elementwise
    (broadcasting); ``gain=None`` observes ``x`` itself (``gain = 1``, no division)."""
    if gain is not None:
        obs, obs_var = obs / gain, obs_var / gain ** 2
    k = var / (var + obs_var)
    return k * obs + (1 - k) * mean, obs_var * k

