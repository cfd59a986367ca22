"""Variational solvers driven by ``pyro.infer.SVI``: RED-Diff, Score Prior, Efficient Score Prior."""
from .red_diff import REDDiff, NonFiniteLossError, WEIGHTINGS

__all__ = ["REDDiff", "NonFiniteLossError", "WEIGHTINGS"]
from .score_prior import ScorePrior, EfficientScorePrior, ess

__all__ += ["ScorePrior", "EfficientScorePrior", "ess"]


# ------------------------------------------------------------------ benchmark registration
def _register():
    import time

    import pyro
    import torch

    from ...benchmarking import SolverOutput, register_solver
    from ..problem import Problem

    @register_solver("red_diff", family="variational")
    def _run_red_diff(problem, model, n_samples, steps, eta, generator, **options):
        """RED-Diff point estimate (repeated n_samples times; it is not a sampler)."""
        pyro.clear_param_store()
        opts = dict(dict(steps=max(int(steps), 1) * 10, lr=0.5, progress=False), **options)
        red = REDDiff(model, generator=generator, **opts)
        den = Problem.from_model(model, y=problem.y).denoiser
        den.reset_nfe()
        mu, trace = red.run(y=problem.y)
        x = mu.reshape(1, -1).expand(n_samples, -1).clone()
        return SolverOutput(x, float(den.nfe), {"loss": float(trace[-1]) if len(trace) else float("nan")})

    def _flow_runner(cls, defaults):
        def run(problem, model, n_samples, steps, eta, generator, **options):
            pyro.clear_param_store()
            pyro.set_rng_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            opts = dict(defaults)
            opts.update(options)
            train_steps = int(opts.pop("train_steps", 300))
            is_samples = int(opts.pop("is_samples", 500))
            is_ode_steps = opts.pop("is_ode_steps", None)
            sp = cls(model, progress=False, **opts)
            t0 = time.perf_counter()
            sp.run(y=problem.y, steps=train_steps)
            train_s = time.perf_counter() - t0
            with torch.no_grad():
                x = sp.sample(n_samples, y=problem.y)
            extra = {"train_nfe": sp.train_nfe, "train_s": train_s, "train_steps": train_steps}
            if is_samples:
                xi, lw = sp.importance_sample(is_samples, y=problem.y, ode_steps=is_ode_steps)
                extra.update(ess=sp.ess(lw), is_n=is_samples, x_is=xi, logw=lw)
            # NFE: batched network calls of the whole training run (samples are free afterwards)
            return SolverOutput(x.reshape(n_samples, -1), float(sp.train_nfe), extra)

        return run

    register_solver("score_prior", family="variational")(
        _flow_runner(ScorePrior, dict(n_layers=4, hidden=(64, 64), lr=1e-2, num_particles=16, ode_steps=4,
                                      init="prior", init_scale=1.0)))
    register_solver("efficient_score_prior", family="variational")(
        _flow_runner(EfficientScorePrior, dict(n_layers=4, hidden=(64, 64), lr=1e-2, num_particles=32,
                                               elbo_samples=4, init="prior", init_scale=1.0)))


_register()
del _register
