"""Solvers for text-conditioned latent diffusion priors (``prior.condition(prompt)``): P2L, TReg and
DreamSampler. Each reads the prompt and the guidance weight from the prior in the Pyro model."""
