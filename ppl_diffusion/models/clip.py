"""A small CLIP-like image-text model (Radford et al., ICML 2021): an image tower and a text tower
mapped to one width ``d`` and trained with the symmetric InfoNCE loss (their Fig. 3) with a learnable
temperature (initialised at 0.07).

Here the text tower mean-pools learned token embeddings over the non-pad tokens of the caption
tokenizer (:class:`~ppl_diffusion.models.text.CaptionTokenizer`) and the image tower is a small CNN;
the width equals the text-conditioned denoiser's embedding width, because TReg's adaptive negation
(Kim et al., ICLR 2025, Sec. 4.2) dots image features with null-prompt embedding tokens.
Zero-shot classification scores an image against one prompt per class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .text import CaptionTokenizer

__all__ = ["CaptionCLIP", "clip_loss"]


class CaptionCLIP(torch.nn.Module):
    """Image tower (CNN on ``(n, C, H, W)``) and text tower (mean-pooled token embeddings) into ``width``."""

    def __init__(self, tokenizer: CaptionTokenizer, width: int = 32, channels: int = 1, hidden: int = 32):
        super().__init__()
        self.tokenizer = tokenizer
        self.config = dict(width=int(width), channels=int(channels), hidden=int(hidden),
                           vocabulary=list(tokenizer.vocabulary), length=tokenizer.length)
        h = hidden
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(channels, h, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(h, 2 * h, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(2 * h, 2 * h, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * h, width))
        self.tokens = torch.nn.Embedding(len(tokenizer), width)
        self.text_proj = torch.nn.Linear(width, width)
        self.log_scale = torch.nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features ``(n, width)``."""
        dt = self.tokens.weight.dtype
        return F.normalize(self.image(x.to(dt)), dim=-1).to(x.dtype)

    def text_features(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Unit-norm text features ``(n, width)`` (``(width,)`` for one string)."""
        ids = self.tokenizer(prompts).to(self.tokens.weight.device)
        single = ids.dim() == 1
        ids = ids[None] if single else ids
        keep = (ids > 0).to(self.tokens.weight.dtype)[..., None]
        pooled = (self.tokens(ids) * keep).sum(1) / keep.sum(1).clamp(min=1)
        f = F.normalize(self.text_proj(pooled), dim=-1)
        return f[0] if single else f

    def classify(self, x: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Index of the best-matching prompt for each image (zero-shot classification)."""
        with torch.no_grad():
            return (self.image_features(x) @ self.text_features(list(prompts)).to(x.dtype).T).argmax(-1)


def clip_loss(model: CaptionCLIP, x: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (image, caption) pairs. Identical captions in a batch are
    treated as positives of each other (the captions are few, so duplicates are common)."""
    fi, ft = model.image_features(x), model.text_features(list(captions))
    logits = model.log_scale.exp().clamp(max=100) * fi @ ft.T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    k = torch.tensor([ids[c] for c in captions])
    same = (k[:, None] == k[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0).T).sum(1).mean())
