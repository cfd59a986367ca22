"""Exact text-conditioned latent problems (problem "E3"): a Gaussian mixture on the latent whose
component weights depend on a prompt embedding, under a linear autoencoder.

* Latent prior at prompt embedding ``c`` (in ``R^e``): ``p(z | c) = sum_k w_k(c) N(z; mu_k, C_k)`` with
  ``w_k(c) = softmax_k(log w_k + b_k^T c)``; each component carries a class label and ``b_k`` is
  ``strength`` times the one-hot vector of its class, so the prompt ``"class j"`` (embedding
  ``e_j``) tilts the weights towards class ``j`` and the null prompt ``""`` (``c = 0``) gives the
  unconditional mixture. The exact conditional denoiser ``D(z_t, t, c)`` is differentiable in ``c``.
* Autoencoder ``Dec(z) = W z + b`` (orthonormal ``W``), ``Enc = W^T (x - b)``; measurement
  ``y = A Dec(z) + sigma_y n`` with ``A`` an inpainting mask.
* Then ``p(z | y, c)`` is an exact Gaussian mixture and the evidence
  ``log p(y | c) = logsumexp_k(log w_k(c) + log N(y; A Dec(mu_k), A W C_k W^T A^T + sigma_y^2 I))``
  is closed form and differentiable in ``c`` (:meth:`TextGMMProblem.log_evidence`), so the empirical
  Bayes prompt ``c_EB = argmax_c log p(y | c)`` (over the ball ``||c|| <= radius``: unbounded, the
  evidence can keep growing towards a corner of the simplex) is computable by projected gradient ascent.
* "CLIP" image features ``g(x) = M [p(k | Enc x)]_k``: the prior responsibilities of ``Enc(x)`` mapped
  to their classes' one-hot embeddings, normalised (the width equals the text width, as TReg needs).

Prompt embeddings are ``(L, d) = (1, e)`` sequences so that the text solvers see the same shapes as
with a transformer text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .autoencoder import AffineAutoencoder
from .gmm import GaussianMixture
from .text import PromptedDenoiser, TextConditionalDenoiser

__all__ = ["TextGMM", "TextGMMDenoiser", "ResponsibilityCLIP", "TextGMMProblem", "text_gmm_problem"]


class TextGMM:
    """A Gaussian mixture whose log-weights are ``log w_k + B c`` (see the module docstring)."""

    def __init__(self, gmm: GaussianMixture, B: torch.Tensor, labels: torch.Tensor, names: list[str]):
        self.gmm, self.B, self.labels, self.names = gmm, B.to(gmm.dtype), labels, list(names)
        self.e = B.shape[1]

    def log_weights(self, c: torch.Tensor) -> torch.Tensor:
        """Normalised log-weights ``(..., K)`` at embeddings ``c`` of shape ``(..., e)``."""
        return torch.log_softmax(torch.log(self.gmm.weights) + c.to(self.gmm.dtype) @ self.B.T, -1)

    def mixture(self, c: torch.Tensor) -> GaussianMixture:
        """``p(z | c)`` for one embedding ``c`` (``(e,)`` or ``(1, e)``)."""
        w = self.log_weights(c.reshape(-1)).exp().detach()
        return GaussianMixture(w, self.gmm.means, self.gmm.full_covs())

    def embedding(self, prompt: str) -> torch.Tensor:
        """``(1, e)``: ``e_j`` for the prompt ``names[j]``, zero for ``""``."""
        c = torch.zeros(1, self.e, dtype=self.gmm.dtype)
        if prompt == "":
            return c
        if prompt not in self.names:
            raise ValueError(f"unknown prompt {prompt!r}; this mixture knows {self.names} and ''")
        c[0, self.names.index(prompt)] = 1.0
        return c


class TextGMMDenoiser(TextConditionalDenoiser):
    """The exact conditional denoiser ``E[z0 | z_t, c]`` of a :class:`TextGMM`."""

    def __init__(self, tgmm: TextGMM, schedule):
        super().__init__(schedule, (tgmm.gmm.d,))
        self.tgmm = tgmm
        # an empty parameter so that priors and solvers read the mixture's dtype (float64) from it
        self.dtype_reference = torch.nn.Parameter(torch.zeros(0, dtype=tgmm.gmm.dtype), requires_grad=False)

    def embed(self, prompts):
        if isinstance(prompts, str):
            return self.tgmm.embedding(prompts)
        return torch.stack([self.tgmm.embedding(p) for p in prompts])

    def denoise_embedded(self, x_t, t, c):
        alpha, sigma = self.coefficients(t, x_t)
        logn, mean0 = self.tgmm.gmm._component_terms(x_t, alpha, sigma)
        c = c.reshape(c.shape[:-2] + (-1,)) if c.shape[-2] == 1 else c.sum(-2)
        r = torch.softmax(logn + self.tgmm.log_weights(c), -1)
        return (r[..., None] * mean0).sum(-2).to(x_t.dtype)

    def sample_terminal_embedded(self, shape, c, generator=None, dtype=None, device=None):
        n = int(torch.Size(shape[:-1]).numel())
        t1 = torch.tensor(1.0, dtype=torch.float64)
        a, s = float(self.schedule.alpha(t1)), float(self.schedule.sigma(t1))
        z0 = self.tgmm.mixture(c).sample(n, generator=generator)
        z = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
        return (a * z0 + s * z).reshape(tuple(shape)).to(dtype=dtype or z0.dtype, device=device)


class ResponsibilityCLIP:
    """E3's "CLIP" image tower: ``g(x) = normalise(M [p(k | Enc x)]_k)`` (see the module docstring)."""

    def __init__(self, tgmm: TextGMM, autoencoder):
        self.tgmm, self.autoencoder = tgmm, autoencoder
        self.M = tgmm.B.T / tgmm.B.abs().max()  # (e, K): component k -> its class's one-hot

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.autoencoder.encode(x)
        r = self.tgmm.gmm.responsibilities(z)
        return torch.nn.functional.normalize(r @ self.M.T.to(r.dtype), dim=-1)


@dataclass
class TextGMMProblem:
    """An exact text-conditioned latent inverse problem (see the module docstring)."""

    text_gmm: TextGMM
    autoencoder: AffineAutoencoder
    operator: object
    y: torch.Tensor
    noise_std: float
    z_true: torch.Tensor
    label: int
    component_log_evidence: torch.Tensor  # (K,)
    seed: int

    @property
    def names(self) -> list[str]:
        return self.text_gmm.names

    def denoiser(self, schedule=None) -> TextGMMDenoiser:
        from ..schedules import VPSchedule

        den = TextGMMDenoiser(self.text_gmm, schedule or VPSchedule.linear())
        den.clip = ResponsibilityCLIP(self.text_gmm, self.autoencoder)
        return den

    def prior(self, prompt: str | None = "", guidance: float = 1.0, schedule=None, embedding=None, **prior_kwargs):
        """The text-conditioned :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior` at ``prompt``."""
        from .latent import LatentDiffusionPrior

        den = PromptedDenoiser(self.denoiser(schedule), prompt, guidance, embedding=embedding)
        return LatentDiffusionPrior(self.autoencoder, den, **prior_kwargs)

    def model(self, prompt: str | None = "", guidance: float = 1.0, schedule=None, **prior_kwargs):
        """The Pyro model ``x ~ prior.condition(prompt)``, ``y ~ GaussianMeasurement(A x, sigma_y)``."""
        import pyro

        from .measurement import GaussianMeasurement

        prior = self.prior(prompt, guidance, schedule, **prior_kwargs)
        op, noise = self.operator, self.noise_std

        def model(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

        return model

    def embedding(self, prompt: str) -> torch.Tensor:
        return self.text_gmm.embedding(prompt)

    def posterior(self, c) -> GaussianMixture:
        """Exact ``p(z | y, c)`` (``c`` a prompt or an embedding)."""
        c = self.embedding(c) if isinstance(c, str) else torch.as_tensor(c)
        A = self.operator.matrix(torch.float64)
        keep = self.operator.mask.reshape(-1).bool() if hasattr(self.operator, "mask") else slice(None)
        W, b = self.autoencoder.W, self.autoencoder.b
        return self.text_gmm.mixture(c).posterior((A @ W)[keep], (self.y - A @ b)[keep], self.noise_std)

    def log_evidence(self, c: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(y | c)`` for embeddings ``c`` of shape ``(..., e)`` or ``(..., 1, e)`` (differentiable)."""
        c = c.reshape(c.shape[:-2] + (-1,)) if c.dim() >= 2 and c.shape[-2] == 1 else c
        return torch.logsumexp(self.text_gmm.log_weights(c) + self.component_log_evidence, -1)

    def empirical_bayes(self, radius: float = 1.0, steps: int = 2000, lr: float = 0.05) -> torch.Tensor:
        """``argmax_{||c|| <= radius} log p(y | c)`` by projected gradient ascent, ``(1, e)``."""
        c = torch.zeros(self.text_gmm.e, dtype=torch.float64, requires_grad=True)
        for _ in range(steps):
            (g,) = torch.autograd.grad(self.log_evidence(c), c)
            with torch.no_grad():
                c += lr * g
                nrm = c.norm()
                if nrm > radius:
                    c *= radius / nrm
        return c.detach()[None]

    def posterior_x(self, c, n: int, generator=None) -> torch.Tensor:
        return self.autoencoder.decode(self.posterior(c).sample(n, generator=generator))


def text_gmm_problem(d: int = 16, k: int = 4, d_y: int = 2, noise_std: float = 0.3, classes: int = 3,
                     per_class: int = 2, strength: float = 3.0, label: int = 0, seed: int = 3,
                     dtype=torch.float64) -> TextGMMProblem:
    """The E3 problem (see the module docstring): ``classes`` classes of ``per_class`` isotropic
    components in ``k`` latent dimensions (class centres ``N(0, 1.5^2 I)``, component offsets
    ``N(0, 0.5^2 I)``, component std 0.25), class prompt ``"class j"`` tilting the log-weights by
    ``strength``, a mask keeping ``d_y`` of ``d`` pixels, and ``z_true`` drawn from class ``label``.

    The defaults (seed 3, two observed pixels) make the prompt matter: the exact posterior's class
    weights are (0.51, 0.43, 0.06) under the null prompt, (0.96, 0.04, 0.01) under "class 0" and
    (0.06, 0.94, 0.01) under "class 1"."""
    from .operators import Inpainting

    g = torch.Generator().manual_seed(20_000 + seed)
    K = classes * per_class
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = 1.5 * torch.randn(classes, k, generator=g, dtype=dtype)
    means = centres[labels] + 0.5 * torch.randn(K, k, generator=g, dtype=dtype)
    covs = (0.25**2) * torch.eye(k, dtype=dtype).expand(K, k, k).clone()
    weights = torch.full((K,), 1.0 / K, dtype=dtype)
    gmm = GaussianMixture(weights, means, covs)
    B = strength * torch.nn.functional.one_hot(labels, classes).to(dtype)
    tgmm = TextGMM(gmm, B, labels, [f"class {j}" for j in range(classes)])
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=dtype))
    b = 0.3 * torch.randn(d, generator=g, dtype=dtype)
    ae = AffineAutoencoder(Q, b)
    keep = torch.zeros(d, dtype=torch.bool)
    keep[torch.randperm(d, generator=g)[:d_y]] = True
    op = Inpainting(keep)
    A = op.matrix(dtype)
    comp = int(torch.nonzero(labels == label)[torch.randint(0, per_class, (1,), generator=g)])
    z_true = means[comp] + 0.25 * torch.randn(k, generator=g, dtype=dtype)
    y = A @ (Q @ z_true + b) + noise_std * torch.randn(d, generator=g, dtype=dtype) * keep
    post = gmm.posterior((A @ Q)[keep], (y - A @ b)[keep], noise_std)
    comp_ev = torch.log(post.weights) + post.log_evidence - torch.log(weights)
    return TextGMMProblem(tgmm, ae, op, y, float(noise_std), z_true, int(label), comp_ev, seed)
