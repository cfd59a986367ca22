"""The real Fourier machinery of the Fourier-diagonal operators (:class:`.blur.Blur`, :class:`.mri.MRI`).

Orthonormal FFT wrappers that accept empty batches, the :class:`_FourierMixin` of the operators on
real ``(..., H, W)`` images, and the real orthonormal Fourier coordinates those operators use as
singular bases.

A real image ``x`` of shape ``(H, W)`` has a Hermitian spectrum ``X = fft2(x, norm="ortho")``:
``X[-w] = conj(X[w])``. Its N = H*W real degrees of freedom are

* ``X[w]`` (real) for the self-conjugate frequencies ``w = -w`` (DC, and the Nyquist rows / columns
  when H or W is even), and
* ``sqrt(2) Re X[w]``, ``sqrt(2) Im X[w]`` for one representative ``w`` of every pair ``{w, -w}``.

Parseval makes ``x -> coordinates`` an orthogonal map of R^N. Every coordinate reads one bin of the
half spectrum ``rfft2(x, norm="ortho")`` (shape ``(H, W//2 + 1)``), so the map and its inverse are an
rFFT plus one gather: O(N log N), never a dense matrix. The "canonical" coordinate order walks the
rfft grid row-major and emits (real, imaginary) for a pair and (real,) for a self-conjugate bin.
Operators then permute the canonical coordinates (e.g. sort by singular value) with
:func:`sort_coordinates`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import _batch, _cast, _complex_of

SQRT2 = math.sqrt(2.0)


@dataclass
class Layout:
    """Index tables of the canonical real Fourier coordinates of an ``(H, W)`` image (CPU tensors).

    Per canonical coordinate ``k`` (length N): ``grid`` (flat rfft bin ``u * Wr + v``), ``part``
    (0 real, 1 imaginary), ``weight`` (1 or sqrt(2)), ``paired`` (False for self-conjugate bins),
    ``p_full`` / ``q_full`` (flat indices ``u * W + v`` of ``w`` and ``-w`` on the full grid).
    Per entry ``e`` of ``view_as_real(rfft2(x)).flatten()`` (length 2 * H * Wr): ``inv_src`` (the
    canonical coordinate it is rebuilt from, N = "zero") and ``inv_weight`` (its factor, with the
    sign flip of the conjugate partner on the redundant half of the edge columns).
    """

    H: int
    W: int
    Wr: int
    N: int
    grid: torch.Tensor
    part: torch.Tensor
    weight: torch.Tensor
    paired: torch.Tensor
    p_full: torch.Tensor
    q_full: torch.Tensor
    inv_src: torch.Tensor
    inv_weight: torch.Tensor


def layout(H: int, W: int) -> Layout:
    """Build the canonical coordinate tables for real ``(H, W)`` images."""
    Wr = W // 2 + 1
    u = torch.arange(H).unsqueeze(1).expand(H, Wr)
    v = torch.arange(Wr).unsqueeze(0).expand(H, Wr)
    # Edge columns: v = 0 and (W even) v = W/2; there the partner -w lies in the same column.
    edge = v == 0
    if W % 2 == 0:
        edge = edge | (v == W // 2)
    selfc = edge & ((u == 0) | (2 * u == H))
    pair_edge = edge & ~selfc & (2 * u < H)
    pair = ~edge | pair_edge
    redundant = (edge & ~selfc & ~pair_edge).reshape(-1)
    count = (selfc.long() + 2 * pair.long()).reshape(-1)
    offset = torch.cumsum(count, 0) - count
    N = int(count.sum())
    if N != H * W:  # pragma: no cover - internal invariant
        raise RuntimeError("internal error: Fourier coordinate count")
    grid = torch.repeat_interleave(torch.arange(H * Wr), count)
    part = torch.arange(N) - offset[grid]
    paired = pair.reshape(-1)[grid]
    # built in float64 explicitly: Python scalars in torch.where would take the default dtype
    weight = torch.full((N,), 1.0, dtype=torch.float64)
    weight[paired] = SQRT2
    fu, fv = grid // Wr, grid % Wr
    p_full = fu * W + fv
    q_full = ((H - fu) % H) * W + (W - fv) % W

    g = torch.arange(H * Wr).repeat_interleave(2)
    p = torch.arange(2).repeat(H * Wr)
    gu, gv = g // Wr, g % Wr
    partner = ((H - gu) % H) * Wr + gv
    red = redundant[g]
    src = offset[torch.where(red, partner, g)] + p
    inv_w = torch.full((2 * H * Wr,), 1.0 / SQRT2, dtype=torch.float64)
    sc = selfc.reshape(-1)[g]
    src = torch.where(sc & (p == 1), torch.full_like(src, N), src)
    inv_w = torch.where(sc, (p == 0).to(torch.float64), inv_w)
    inv_w = torch.where(red & (p == 1), -inv_w, inv_w)
    return Layout(H, W, Wr, N, grid, part, weight, paired, p_full, q_full, src, inv_w)


def sort_coordinates(lay: Layout, s_local: torch.Tensor, channels: int):
    """Order the coordinates of ``channels`` stacked images by ``s`` descending (stable).

    ``s_local`` (length N) is the value of each canonical coordinate, shared by all channels; the
    global canonical index is ``c * N + k``. Returns ``(s_sorted, order, fwd_idx, fwd_w, inv_idx,
    inv_w)`` where ``order[j]`` is the global canonical index at sorted position ``j``, and the two
    gather tables feed :func:`to_coords` / :func:`from_coords` directly.
    """
    N, C = lay.N, channels
    D, ZC = C * N, 2 * lay.H * lay.Wr
    s = s_local.repeat(C)
    order = torch.sort(s, descending=True, stable=True).indices
    pos = torch.empty_like(order)
    pos[order] = torch.arange(D)
    ch, k = order // N, order % N
    fwd_idx = ch * ZC + 2 * lay.grid[k] + lay.part[k]
    fwd_w = lay.weight[k]
    chz = torch.arange(C).repeat_interleave(ZC)
    e = torch.arange(ZC).repeat(C)
    src_local = lay.inv_src[e]
    glob = (chz * N + src_local).clamp(max=D - 1)
    inv_idx = torch.where(src_local == N, torch.full_like(glob, D), pos[glob])
    inv_w = lay.inv_weight[e]
    return s[order], order, fwd_idx, fwd_w, inv_idx, inv_w


def to_coords(X: torch.Tensor, fwd_idx: torch.Tensor, fwd_w: torch.Tensor) -> torch.Tensor:
    """``(*b, C, H, Wr)`` half spectrum -> ``(*b, C*H*W)`` real coordinates (one gather)."""
    Z = torch.view_as_real(X.resolve_conj().contiguous())
    Z = Z.reshape(*X.shape[:-3], X.shape[-3] * X.shape[-2] * X.shape[-1] * 2)
    return Z[..., fwd_idx] * fwd_w


def from_coords(c: torch.Tensor, inv_idx: torch.Tensor, inv_w: torch.Tensor, C: int, H: int, Wr: int):
    """Inverse of :func:`to_coords`: ``(*b, C*H*W)`` -> Hermitian-consistent ``(*b, C, H, Wr)``."""
    c_ext = torch.cat([c, c.new_zeros(c.shape[:-1] + (1,))], dim=-1)
    Z = (c_ext[..., inv_idx] * inv_w).reshape(*c.shape[:-1], C, H, Wr, 2)
    return torch.view_as_complex(Z)


def hermitian_edges(K: torch.Tensor, W: int) -> torch.Tensor:
    """Make the edge columns of a half spectrum ``(H, Wr)`` exactly Hermitian (``K[-u] = conj K[u]``).

    rFFT output of a real array is Hermitian only up to rounding on the columns v = 0 and v = W/2;
    averaging with the reflected conjugate makes it exact (and self-conjugate bins exactly real).
    """
    K = K.clone()
    H = K.shape[0]
    refl = (-torch.arange(H, device=K.device)) % H
    cols = [0] + ([W // 2] if W % 2 == 0 else [])
    for v in cols:
        col = K[:, v]
        K[:, v] = 0.5 * (col + col[refl].conj())
    return K


def mri_taps(lay: Layout, mask: torch.Tensor, order: torch.Tensor, channels: int):
    """Left singular basis of the masked real FFT (see :class:`.mri.MRI`), as 2-tap gathers.

    Measurement components per channel are laid out ``(2, H, W)`` flattened (real plane, then
    imaginary plane). For a pair ``{p, q = -p}`` with components ``A_p, A_q`` (A = real part, sign
    ``sgn = +1``; A = imaginary part, ``sgn = -1``) the orthonormal left vectors are

    * both or neither sampled: aligned ``(A_p + sgn A_q)/sqrt2``, complement ``(A_p - sgn A_q)/sqrt2``
    * only p sampled: aligned ``A_p``, complement ``A_q``
    * only q sampled: aligned ``sgn A_q``, complement ``A_p``

    and for a self-conjugate bin: aligned ``Re``, complement ``Im``. Output slot order: the aligned
    slots of the in-space coordinates in sorted order ``order``, then the complement slots in global
    canonical order. Returns ``(s_local, Ut_taps, U_taps)``; each taps tuple is ``(i1, w1, i2, w2)``
    with ``out[j] = w1[j] * in[i1[j]] + w2[j] * in[i2[j]]``.
    """
    N, C = lay.N, channels
    D = C * N
    m = mask.reshape(-1).to(torch.bool).cpu()
    p, q = lay.p_full, lay.q_full
    mp, mq = m[p], m[q]
    self_c = ~lay.paired
    sgn = torch.where(lay.part == 0, 1.0, -1.0).to(torch.float64)
    base = torch.where(lay.part == 0, 0, N)
    ip, iq = base + p, base + q
    same = mp == mq
    only_p = mp & ~mq
    only_q = ~mp & mq
    r2 = 1.0 / SQRT2
    one = torch.ones(N, dtype=torch.float64)
    zero = torch.zeros(N, dtype=torch.float64)
    a_i1 = torch.where(only_q, iq, ip)
    a_w1 = torch.where(same, r2 * one, torch.where(only_p, one, sgn))
    a_i2 = iq
    a_w2 = torch.where(same, sgn * r2, zero)
    c_i1 = torch.where(only_p, iq, ip)
    c_w1 = torch.where(same, r2 * one, one)
    c_i2 = iq
    c_w2 = torch.where(same, -sgn * r2, zero)
    # self-conjugate bins: aligned = real part, complement = imaginary part
    a_i1 = torch.where(self_c, p, a_i1)
    a_w1 = torch.where(self_c, one, a_w1)
    a_w2 = torch.where(self_c, zero, a_w2)
    c_i1 = torch.where(self_c, N + p, c_i1)
    c_w1 = torch.where(self_c, one, c_w1)
    c_w2 = torch.where(self_c, zero, c_w2)
    mf = m.to(torch.float64)
    s_local = torch.where(self_c, mf[p], torch.sqrt(0.5 * (mf[p] + mf[q])))

    ch, k = order // N, order % N
    off_a = ch * 2 * N
    gc = torch.arange(D)
    chc, kc = gc // N, gc % N
    off_c = chc * 2 * N
    i1 = torch.cat([off_a + a_i1[k], off_c + c_i1[kc]])
    w1 = torch.cat([a_w1[k], c_w1[kc]])
    i2 = torch.cat([off_a + a_i2[k], off_c + c_i2[kc]])
    w2 = torch.cat([a_w2[k], c_w2[kc]])
    return s_local, (i1, w1, i2, w2), transpose_taps(i1, w1, i2, w2, 2 * D)


def transpose_taps(i1, w1, i2, w2, n: int):
    """Transpose a 2-tap gather of an ``n x n`` matrix with at most two entries per column."""
    rows = torch.arange(n).repeat(2)
    cols = torch.cat([i1, i2])
    vals = torch.cat([w1, w2])
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    o = torch.sort(cols, stable=True).indices
    rows, cols, vals = rows[o], cols[o], vals[o]
    count = torch.bincount(cols, minlength=n)
    if int(count.max()) > 2 or int(count.min()) < 1:  # pragma: no cover - internal invariant
        raise RuntimeError("internal error: tap transpose")
    first = torch.cumsum(count, 0) - count
    slot = torch.arange(cols.numel()) - first[cols]
    J = torch.zeros(2, n, dtype=torch.long)
    Wt = torch.zeros(2, n, dtype=torch.float64)
    J[slot, cols] = rows
    Wt[slot, cols] = vals
    return J[0], Wt[0], J[1], Wt[1]


def apply_taps(t: torch.Tensor, taps) -> torch.Tensor:
    """``out[..., j] = w1[j] t[..., i1[j]] + w2[j] t[..., i2[j]]``."""
    i1, w1, i2, w2 = taps
    return t[..., i1] * w1 + t[..., i2] * w2


# ----------------------------------------------------------------------------------------------
# orthonormal FFTs (empty batches allowed) and the operators' shared Fourier helpers


def _rfft2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D rFFT over the last two dims (empty batches allowed; MKL rejects them)."""
    if x.numel() == 0:
        return torch.zeros(x.shape[:-1] + (x.shape[-1] // 2 + 1,), dtype=_complex_of(x.dtype), device=x.device)
    return torch.fft.rfft2(x, norm="ortho")


def _irfft2(X: torch.Tensor, s: tuple) -> torch.Tensor:
    if X.numel() == 0:
        return torch.zeros(X.shape[:-2] + tuple(s), dtype=X.real.dtype, device=X.device)
    return torch.fft.irfft2(X, s=s, norm="ortho")


def _fft2(x: torch.Tensor) -> torch.Tensor:
    if x.numel() == 0:
        dtype = x.dtype if x.is_complex() else _complex_of(x.dtype)
        return torch.zeros(x.shape, dtype=dtype, device=x.device)
    return torch.fft.fft2(x, norm="ortho")


def _ifft2(X: torch.Tensor) -> torch.Tensor:
    if X.numel() == 0:
        return torch.zeros_like(X)
    return torch.fft.ifft2(X, norm="ortho")


class _FourierMixin:
    """Shared helpers for operators on real ``(..., H, W)`` images with the real Fourier basis."""

    def _setup_fourier(self, in_shape, s_local: torch.Tensor):
        H, W = in_shape[-2:]
        self._H, self._W, self._Wr = H, W, W // 2 + 1
        self._C = math.prod(in_shape[:-2])
        lay = layout(H, W)
        s_sorted, order, fi, fw, ii, iw = sort_coordinates(lay, s_local, self._C)
        self._fwd_idx, self._fwd_w, self._inv_idx, self._inv_w = fi, fw, ii, iw
        return s_sorted, order

    def _rfft(self, x, event_shape):
        b = _batch(x, event_shape)
        return _rfft2(x.reshape(*b, self._C, self._H, self._W))

    def _irfft(self, X):
        out = _irfft2(X, (self._H, self._W))
        return out.reshape(*X.shape[:-3], *self.in_shape)

    def _coords(self, X, ref):
        return to_coords(X, _cast(self._fwd_idx, ref), _cast(self._fwd_w, ref))

    def _uncoords(self, c):
        return from_coords(c, _cast(self._inv_idx, c), _cast(self._inv_w, c), self._C, self._H, self._Wr)

