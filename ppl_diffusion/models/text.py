"""Text-conditioned latent denoisers: prompts, classifier-free guidance, and the small caption model.

A text-conditioned latent diffusion model (Rombach et al., CVPR 2022, Sec. 3.3: a denoiser
``D(z_t, t, c)`` that reads a prompt embedding ``c`` of shape ``(L, d)`` by cross-attention) is a
:class:`TextConditionalDenoiser`. Classifier-free guidance (Ho & Salimans 2022, eq. 6) with a null
prompt ``""`` turns it into a plain :class:`~ppl_diffusion.denoisers.Denoiser` for one prompt::

    D_w(z_t, t) = D(z_t, t, null) + w (D(z_t, t, c) - D(z_t, t, null))

(the same combination in noise space, since ``eps`` is affine in ``x0`` at fixed ``z_t``, ``t``);
that is :class:`PromptedDenoiser`, and :meth:`LatentDiffusionPrior.condition
<ppl_diffusion.models.latent.LatentDiffusionPrior.condition>` puts it in a prior, so a Pyro model
carries its prompt: ``x = pyro.sample("x", prior.condition("digit seven"))``. ``w = 1`` is the
conditional model itself (one network pass per call), ``w = 0`` the unconditional one; other ``w``
cost two passes per call and have no normalised target density.

**Scale, honestly.** The shipped ``digits-text`` model's "text" is short captions generated from the
digit label and two measured attributes (stroke thickness from pixel-mass terciles, slant from the
second image moment), over a vocabulary of a few dozen words (:data:`VOCABULARY`). It is a
class/attribute-conditional model with a text interface; it has no language understanding, and a
word outside the vocabulary is refused.

Pieces: :func:`caption` / :func:`digit_attributes` (the caption generator), :class:`CaptionTokenizer`
(word level, ``L = 8`` tokens, pad-filled), :class:`TextEncoder` (token + position embeddings and a
small transformer encoder, trained jointly with the denoiser as in LDM's trainable text encoder),
:class:`UNetTextDenoiser` (a diffusers ``UNet2DConditionModel`` with epsilon prediction).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..denoisers import Denoiser

__all__ = ["DIGIT_NAMES", "VOCABULARY", "caption", "digit_attributes", "attribute_bins", "CaptionTokenizer",
           "TextEncoder", "TextConditionalDenoiser", "PromptedDenoiser", "UNetTextDenoiser", "digit_prompt",
           "text_denoiser_of"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS_WORDS = ("thin", "medium", "thick")
SLANT_WORDS = ("left", "upright", "right")
#: every word the digits tokenizer knows (index 0 is the pad token)
VOCABULARY = ("<pad>", "a", "handwritten", "digit", "number", "the", "of", "with", "stroke", "slanted",
              "written", *DIGIT_NAMES, *THICKNESS_WORDS, *SLANT_WORDS)


def digit_prompt(label: int) -> str:
    """The plain class prompt ``"a handwritten digit <name>"``."""
    return f"a handwritten digit {DIGIT_NAMES[int(label)]}"


def digit_attributes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mass, slant)`` of digits ``x`` (``(n, 1, H, W)`` in [-1, 1]): mean ink ``(x + 1) / 2`` and the
    slant ``mu_11 / mu_02`` of the ink's second central moments (positive: top leans right)."""
    ink = ((x.float() + 1) / 2).clamp(min=0).flatten(1)
    n, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    m = ink.sum(1).clamp(min=1e-6)
    cy, cx = (ink * yy).sum(1) / m, (ink * xx).sum(1) / m
    dy, dx = yy[None] - cy[:, None], xx[None] - cx[:, None]
    mu11 = (ink * dx * dy).sum(1) / m
    mu02 = (ink * dy * dy).sum(1) / m
    # rows grow downwards: a top leaning right has x decreasing with y, i.e. mu11 < 0
    return ink.mean(1).reshape(n), (-mu11 / mu02.clamp(min=1e-6)).reshape(n)


def attribute_bins(values: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Tercile index (0, 1, 2) of each value given the two tercile ``edges``."""
    e = torch.as_tensor(list(edges), dtype=values.dtype)
    return torch.bucketize(values, e)


def caption(label: int, thickness: int | None = None, slant: int | None = None, template: int = 0) -> str:
    """A caption of a digit from its label and (optional) thickness / slant tercile indices.

    Templates: 0 ``"a handwritten digit seven thick stroke"``, 1 ``"digit seven slanted left"``,
    2 ``"the number seven"`` (+ attributes), 3 ``"a digit seven"`` (+ attributes); the thickness
    word is dropped for the middle tercile and the slant words for upright digits half the time
    (the caller picks ``template``)."""
    name = DIGIT_NAMES[int(label)]
    head = ("a handwritten digit", "digit", "the number", "a digit")[int(template) % 4]
    words = [head, name]
    if thickness is not None and int(thickness) != 1:
        words += [THICKNESS_WORDS[int(thickness)], "stroke"]
    if slant is not None and int(slant) != 1:
        words += ["slanted", SLANT_WORDS[int(slant)]]
    return " ".join(words)


class CaptionTokenizer:
    """Word-level tokenizer over a fixed vocabulary; ``length`` tokens per prompt, pad-filled.

    The empty prompt ``""`` (the null prompt of classifier-free guidance) is all pad tokens. A word
    outside the vocabulary is a ``ValueError`` listing the vocabulary: the model knows nothing else."""

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, length: int = 8):
        self.vocabulary = tuple(vocabulary)
        self.length = int(length)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``(n, length)`` (``(length,)`` for a single string)."""
        single = isinstance(prompts, str)
        rows = []
        for p in [prompts] if single else prompts:
            words = str(p).lower().replace(",", " ").split()
            bad = [w for w in words if w not in self.index or w == "<pad>"]
            if bad:
                raise ValueError(f"prompt {p!r}: unknown word(s) {bad}; this caption model knows only "
                                 f"{' '.join(self.vocabulary[1:])}")
            if len(words) > self.length:
                raise ValueError(f"prompt {p!r} has {len(words)} words; at most {self.length}")
            rows.append([self.index[w] for w in words] + [0] * (self.length - len(words)))
        ids = torch.tensor(rows, dtype=torch.long)
        return ids[0] if single else ids


class TextEncoder(torch.nn.Module):
    """Token + position embeddings and a small ``nn.TransformerEncoder``: ids ``(n, L)`` -> ``(n, L, d)``."""

    def __init__(self, vocab_size: int, length: int = 8, width: int = 32, layers: int = 2, heads: int = 4):
        super().__init__()
        self.config = dict(vocab_size=int(vocab_size), length=int(length), width=int(width), layers=int(layers),
                           heads=int(heads))
        self.tokens = torch.nn.Embedding(vocab_size, width)
        self.positions = torch.nn.Parameter(0.02 * torch.randn(length, width))
        layer = torch.nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(self.tokens(ids) + self.positions))


class TextConditionalDenoiser(Denoiser):
    """Protocol of a prompt-conditioned denoiser ``D(z_t, t, c)``.

    Subclasses implement :meth:`denoise_embedded` (``c`` of shape ``(L, d)`` for all samples or
    ``(*batch, L, d)`` one per sample) and :meth:`embed` (prompts -> embeddings). :meth:`denoise`
    is the unconditional model (the null prompt). ``clip`` may hold an image-text model whose
    ``image_features(x)`` live in the embedding width ``d`` (TReg's adaptive negation); solvers read
    it with ``getattr(denoiser, "clip", None)``."""

    def denoise_embedded(self, x_t: torch.Tensor, t, c: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def embed(self, prompts: str | Sequence[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def null_embedding(self) -> torch.Tensor:
        return self.embed("")

    def denoise(self, x_t, t):
        return self.denoise_embedded(x_t, t, self.null_embedding)

    def forward_embedded(self, x_t: torch.Tensor, t, c: torch.Tensor) -> torch.Tensor:
        """:meth:`denoise_embedded` counted as one network evaluation (``nfe`` / ``sample_evals``)."""
        self._check(x_t)
        self.nfe += 1
        self.sample_evals += x_t.numel() // max(self.event_shape.numel(), 1)
        return self.denoise_embedded(x_t, torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device), c)


def text_denoiser_of(denoiser) -> TextConditionalDenoiser | None:
    """The :class:`TextConditionalDenoiser` behind ``denoiser`` (itself or a PromptedDenoiser's), else None."""
    if isinstance(denoiser, PromptedDenoiser):
        return denoiser.text
    return denoiser if isinstance(denoiser, TextConditionalDenoiser) else None


class PromptedDenoiser(Denoiser):
    """A :class:`TextConditionalDenoiser` at one prompt with classifier-free guidance weight
    ``guidance`` (see the module docstring). ``embedding`` / ``null`` are ``(L, d)`` tensors; a
    network evaluation of this denoiser is counted once here and once (``w`` in {0, 1}) or twice
    (other ``w``) on ``text``."""

    def __init__(self, text: TextConditionalDenoiser, prompt: str | None = None, guidance: float = 1.0,
                 embedding: torch.Tensor | None = None, null: torch.Tensor | None = None):
        if not isinstance(text, TextConditionalDenoiser):
            raise ValueError(f"text must be a TextConditionalDenoiser, got {type(text).__name__}")
        super().__init__(text.schedule, text.event_shape)
        self.text = text
        self.prompt = "" if prompt is None else str(prompt)
        self.guidance = float(guidance)
        with torch.no_grad():
            self.embedding = (text.embed(self.prompt) if embedding is None else embedding).detach()
            self.null = (text.null_embedding if null is None else null).detach()

    def denoise(self, x_t, t):
        w = self.guidance
        if w == 1.0:
            return self.text.forward_embedded(x_t, t, self.embedding)
        d0 = self.text.forward_embedded(x_t, t, self.null)
        if w == 0.0:
            return d0
        return d0 + w * (self.text.forward_embedded(x_t, t, self.embedding) - d0)

    @property
    def sample_terminal(self):
        """The exact sampler of ``z_1`` at this prompt when the text denoiser has one (w = 1), else None."""
        f = getattr(self.text, "sample_terminal_embedded", None)
        if f is None or self.guidance not in (0.0, 1.0):
            return None
        c = self.embedding if self.guidance == 1.0 else self.null

        def sample(shape, generator=None, dtype=None, device=None):
            return f(shape, c, generator, dtype, device)

        return sample


class UNetTextDenoiser(TextConditionalDenoiser):
    """A diffusers ``UNet2DConditionModel`` (epsilon prediction) reading a :class:`TextEncoder`'s
    output by cross-attention, with its :class:`CaptionTokenizer`. Runs in the network's dtype."""

    def __init__(self, unet, text_encoder: TextEncoder, tokenizer: CaptionTokenizer, scheduler_config: dict,
                 clip=None):
        from ..schedules import VPSchedule

        cfg = unet.config
        size = cfg.sample_size
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(VPSchedule.from_scheduler_config(dict(scheduler_config)), (int(cfg.in_channels), H, W))
        if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("UNetTextDenoiser supports epsilon prediction only")
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.clip = clip
        for m in (unet, text_encoder):
            m.requires_grad_(False).eval()

    def embed(self, prompts):
        p = next(self.text_encoder.parameters())
        ids = self.tokenizer(prompts).to(p.device)
        single = ids.dim() == 1
        out = self.text_encoder(ids[None] if single else ids)
        return out[0] if single else out

    def denoise_embedded(self, x_t, t, c):
        batch = x_t.shape[: x_t.dim() - 3]
        flat = x_t.reshape((-1,) + tuple(self.event_shape))
        n = flat.shape[0]
        dt = next(self.unet.parameters()).dtype
        c = c.to(device=x_t.device, dtype=dt)
        c = c.expand((n,) + tuple(c.shape[-2:])) if c.dim() == 2 else c.reshape((n,) + tuple(c.shape[-2:]))
        tt = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if tt.dim() > 0:
            steps = self.schedule.model_timestep(tt.expand(batch).reshape(-1)).to(torch.float32)
        else:
            steps = self.schedule.model_timestep(tt).to(torch.float32).expand(n)
        eps = self.unet(flat.to(dt), steps, encoder_hidden_states=c).sample.to(x_t.dtype).reshape(x_t.shape)
        alpha, sigma = self.coefficients(t, x_t)
        return (x_t - sigma * eps) / alpha

