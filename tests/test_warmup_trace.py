"""The warm-up trace bench: its comparisons are the ones ``draw(warmup="auto")`` computes on the same
chains, and its zero-mass share counts exactly the states whose most responsible component has no
posterior mass."""
import warnings

import pytest
import torch

from ppl_diffusion.bench.exactness import PNPDM_REPLICAS, exactness_problem
from ppl_diffusion.bench.warmup_trace import _zero_mass_share, warmup_trace
from ppl_diffusion.inference.kernels import AutoWarmup, PnPDM
from ppl_diffusion.models.gmm import GaussianMixture
from ppl_diffusion.schedules import VPSchedule


@pytest.mark.slow  # 104-112 s of a 2-core CI run (measured 2026-12-03); the default run must stay under 15 minutes
def test_trace_reproduces_the_automatic_warmups_comparisons():
    rows = warmup_trace("uneven", 8, 2, 1, chains=16, max_warmup=400)
    pb = exactness_problem("uneven", 8, 2, seed=1).to(torch.float32)
    kern = PnPDM(pb.model(VPSchedule.gmm_benchmark()), **PNPDM_REPLICAS)
    with warnings.catch_warnings():  # alpha close to 1: never settles, so every comparison is made
        warnings.simplefilter("ignore")
        d = kern.draw(16, y=pb.y, chains=16, warmup=AutoWarmup(max_warmup=400, alpha=0.999), thin=1,
                      generator=torch.Generator().manual_seed(90_001))
    checks = d.extra["warmup_checks"]
    assert [(r["from"], r["to"]) for r in rows] == [(c["from"], c["to"]) for c in checks] == [(100, 200), (200, 400)]
    for r, c in zip(rows, checks):
        for key in ("p_region", "p_loglik", "shift", "loglik_shift"):
            assert abs(r[key] - c[key]) <= 1e-9 * max(1.0, abs(c[key])), key
    first = [r["stops_here"] for r in rows]
    assert sum(first) <= 1 and all(r["settled"] == (r["p"] >= 0.05) for r in rows)


def test_zero_mass_share_counts_states_in_massless_components():
    mix = GaussianMixture(torch.tensor([0.6, 0.4 - 1e-9, 1e-9], dtype=torch.float64),
                          torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64))
    x = torch.tensor([[[0.1, 0.0], [0.0, 9.9]], [[10.0, 0.2], [0.3, 10.1]]], dtype=torch.float64)  # (T=2, C=2, 2)
    z = _zero_mass_share(x, mix, 1e-6)
    assert z.tolist() == [[False, True], [False, True]]
    assert _zero_mass_share(x, mix, 1e-12).sum() == 0
