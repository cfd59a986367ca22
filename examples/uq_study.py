"""Uncertainty quantification study: are the 90 % pixel credible intervals calibrated?

For several held-out images and several methods (one per family), solve 2x super-resolution and
report the coverage of the equal-tailed pixel intervals at ten levels (0.90 at the 90 % level is
calibrated, lower is over-confident), the PSNR of the posterior mean and corr(std, |error|). The grid
runs through ``ppl_diffusion.study``: each finished cell is written at once, a re-run skips it, and
``--ray`` runs the cells as Ray tasks on a local Ray (``pip install 'ppl-diffusion[ray]'``).
Run:  python examples/uq_study.py [--fast] [--ray]
"""
import sys

from _common import fast_mode, out_dir, prior_name
from ppl_diffusion.study import Study, run_study

fast = fast_mode()
study = Study(
    name="uq_sr2",
    problem={"kind": "image", "prior": prior_name(), "operator": "sr", "op_args": {"factor": 2}, "noise_std": 0.05},
    measurements=2 if fast else 6,  # held-out images 0..5; the noise of image i is drawn with seed i
    samples=4 if fast else 16,
    methods={  # label -> solver options (the registry name is the label)
        "ddrm": {"steps": 4 if fast else 50},
        "dps": {"steps": 4 if fast else 100},
        "red_diff": {"steps": 10 if fast else 300, "lr": 0.1},
        "mcgdiff": {"steps": 4 if fast else 40, "particles": 4 if fast else 32, "independent": False},
        "pnpdm": {"num_grid": 10 if fast else 40, "rho0": 2.0, "decay": 0.8, "warmup": 1 if fast else 12,
                  "chains": 4},
    },
)
out = out_dir("uq_study")
res = run_study(study, out, backend="ray" if "--ray" in sys.argv[1:] else "inprocess", workers=2, progress=not fast)
print((res.out / "summary.md").read_text())
print(f"{res.ran} cells run, {res.skipped} already done; {out}/study.nc (posterior x with dims "
      f"{tuple(res.inference_data.posterior['x'].dims)}), {out}/table.csv, {out}/calibration.png")
with open(f"{out}/coverage.md", "w") as f:
    f.write(f"# Coverage of pixel intervals, 2x SR, sigma_y=0.05, {len(study.measurements)} images, "
            f"{study.samples} draws\n\n" + (res.out / "summary.md").read_text().split("\n", 2)[2])
