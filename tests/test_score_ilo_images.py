"""The Score-ILO image bench: its summary of draws, and its DPS / DDRM baselines on the shared measurements."""
import math
from types import SimpleNamespace

import pytest
import torch

from ppl_diffusion.bench import score_ilo_images
from ppl_diffusion.bench.optimise_images import draw_summary


def test_draw_summary_best_objective_and_posterior_mean_closed_form():
    x = torch.zeros(1, 4, 4)
    # three constant draws 0.1, 0.2, 0.4 away from x: PSNR = 10 log10(4 / c^2) (data range 2)
    cs = (0.1, 0.2, 0.4)
    d = torch.stack([torch.full_like(x, c) for c in cs])[None]  # (chain, draw, *event)
    res = SimpleNamespace(flat=lambda: d.reshape(3, 1, 4, 4), stats={"objective": torch.tensor([[3.0, 1.0, 2.0]])})
    p = [10 * math.log10(4 / c**2) for c in cs]
    mean_p, std_p = sum(p) / 3, torch.tensor(p).std().item()
    best, _, m, s = draw_summary(res, x, point=True)  # restart 1 has the smallest objective
    assert best == pytest.approx(p[1], abs=1e-4) and m == pytest.approx(mean_p, abs=1e-4)
    assert s == pytest.approx(std_p, abs=1e-4)
    post, _, _, _ = draw_summary(res, x, point=False)  # the mean image is constant 0.7 / 3
    assert post == pytest.approx(10 * math.log10(4 / (0.7 / 3) ** 2), abs=1e-4)


def _rows(text):
    return {r.split(" | ")[0].strip("| "): [c.strip() for c in r.strip("|").split("|")]
            for r in text.splitlines() if r.startswith("| ") and "---" not in r and "variant" not in r}


def _direct(method, prior, op, xs, n, options, point):
    """Rows recomputed by hand: every y drawn first with seed 0, then one generator (seed 1) for the method."""
    from ppl_diffusion.methods import run_method
    from ppl_diffusion.tasks import make_model

    g = torch.Generator().manual_seed(0)
    ys = [op(x) + 0.05 * torch.randn(op.out_shape, generator=g) for x in xs]
    g = torch.Generator().manual_seed(1)
    model = make_model(prior, op, 0.05)
    s = [draw_summary(run_method(method, model, y, n, generator=g, options=options), x, point) for x, y in zip(xs, ys)]
    m = [sum(r[i] for r in s) / len(s) for i in range(4)]
    return [f"{m[0]:.2f}", f"{m[1]:.3f}", f"{m[2]:.2f}", f"{m[3]:.2f}"]


def test_score_ilo_and_baseline_rows_see_the_same_y(monkeypatch):
    """Score-ILO and DDRM rows on 2 images equal each method run by hand on one shared list of y (drawn
    before any method; with y drawn between the methods' calls the second image's y would depend on the
    method), and the DDRM row does not change with the variant run before it."""
    from ppl_diffusion.bench.images import tasks
    from ppl_diffusion.models.zoo import heldout_images, load_prior

    torch.set_num_threads(1)
    monkeypatch.setattr(score_ilo_images, "TASKS", ("sr2",))
    cheap = {"a": dict(z_steps=3, h_steps=0, z_temperature=0.0, h_temperature=0.0, score_model=None),
             "b": dict(z_steps=6, h_steps=2, z_temperature=0.0, h_temperature=0.0, score_model=None)}
    monkeypatch.setattr(score_ilo_images, "VARIANTS", cheap)
    label = "ddrm (pixel prior, posterior mean)"
    kw = dict(n_images=2, restarts=2, draws=2, baselines=(label,), out="-")
    ra, rb = _rows(score_ilo_images.run(["a"], **kw)), _rows(score_ilo_images.run(["b"], **kw))
    assert set(ra) == {"a", label} and set(rb) == {"b", label}
    assert ra[label][:-1] == rb[label][:-1]  # all but the wall time
    assert ra["a"][6] == "4" and rb["b"][6] == "9"  # z_steps + h_steps + 1 decoder passes, no score calls
    assert ra[label][6] == "50"

    xs, op = heldout_images("digits")[:2], tasks()["sr2"]
    assert ra[label][2:6] == _direct("ddrm", load_prior("digits"), op, xs, 2, dict(steps=50), False)
    assert ra["a"][2:6] == _direct("score_ilo", load_prior("digits-latent"), op, xs, 2, cheap["a"], True)
