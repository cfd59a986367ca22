"""Uncertainty quantification study: are the 90 % pixel credible intervals calibrated?

For several held-out images and several methods (one per family), solve 2x super-resolution and
report the fraction of pixels whose true value lies in the 90 % equal-tailed interval (0.90 is
calibrated, lower is over-confident), the PSNR of the posterior mean and corr(std, |error|).
Run:  python examples/uq_study.py [--fast]
"""
import torch

from _common import fast_mode, out_dir, prior_name
from ppl_diffusion.evaluation import evaluate
from ppl_diffusion.methods import run_method  # any registered solver by name, through its draw()
from ppl_diffusion.models.zoo import heldout_images, load_prior
from ppl_diffusion.tasks import make_model, make_operator

fast = fast_mode()
prior = load_prior(prior_name())
images = heldout_images(prior_name())[: 2 if fast else 6]
A = make_operator("sr", tuple(prior.event_shape), factor=2)
sigma_y = 0.05
model = make_model(prior, A, sigma_y)
methods = {  # name -> options
    "ddrm": {"steps": 4 if fast else 50},
    "dps": {"steps": 4 if fast else 100},
    "red_diff": {"steps": 10 if fast else 300, "lr": 0.1},
    "mcgdiff": {"steps": 4 if fast else 40, "particles": 4 if fast else 32, "independent": False},
    "pnpdm": {"num_grid": 10 if fast else 40, "rho0": 2.0, "decay": 0.8, "warmup": 1 if fast else 12, "chains": 4},
}
n = 4 if fast else 16
rows = []
for i, x_true in enumerate(images):
    g = torch.Generator().manual_seed(i)
    y = A(x_true) + sigma_y * torch.randn(A.out_shape, generator=g)
    for m, opts in methods.items():
        res = run_method(m, model, y, n, generator=torch.Generator().manual_seed(100 + i), options=opts)
        rows.append(dict(image=i, method=m, **evaluate(res.flat(), x_true), seconds=res.seconds))

lines = ["| method | coverage 90% (mean ± sd over images) | PSNR | corr(std, err) |", "|---|---|---|---|"]
for m in methods:
    r = [row for row in rows if row["method"] == m]
    cov = torch.tensor([row["coverage90"] for row in r])
    lines.append(f"| {m} | {cov.mean():.3f} ± {cov.std():.3f} | {sum(row['psnr'] for row in r) / len(r):.2f} | "
                 f"{sum(row['std_err_corr'] for row in r) / len(r):.2f} |")
table = "\n".join(lines)
print(table)
with open(f"{out_dir('uq_study')}/coverage.md", "w") as f:
    f.write(f"# Coverage of 90 % pixel intervals, 2x SR, sigma_y={sigma_y}, {len(images)} images, {n} draws\n\n"
            + table + "\n")
