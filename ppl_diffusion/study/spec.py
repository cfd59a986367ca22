"""A study as a grid: measurements x methods x settings x seeds, read from Python, a dict or a TOML file.

A *measurement* is one inverse problem with a known truth: for ``kind = "image"`` the held-out image
``i`` of a prior seen through an operator with Gaussian noise (noise drawn with seed ``i``); for
``kind = "gmm"`` the GMM benchmark problem with seed ``i`` (Cardoso et al., ICLR 2024), whose exact
posterior is known, so that the cell is also scored by sliced Wasserstein distance. A *method* is a
label with the registry name and its options; a *setting* is a named set of overrides (problem keys
such as ``noise_std``, ``operator``, ``op_args``, ``d_y``; ``samples``; ``options`` merged into every
method's options); a *seed* seeds the solver.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Study", "Cell", "load_study", "PROBLEM_KINDS"]

#: the problem kinds and their keys (defaults)
PROBLEM_KINDS = {
    "image": {"prior": "digits", "operator": "sr", "op_args": {}, "noise_std": 0.05, "prior_kwargs": {},
              "device": "cpu"},
    "gmm": {"d": 8, "d_y": 2},
}
_SETTING_KEYS = {"samples", "options"}


@dataclass(frozen=True)
class Cell:
    """One task of a study: everything it needs to run, in plain (picklable, JSON-able) values."""

    measurement: int
    method: str  # the method's label in the study
    setting: str
    seed: int
    name: str  # registry name of the solver
    options: dict
    problem: dict
    samples: int

    @property
    def cell_id(self) -> str:
        """``m<measurement>_<method>_<setting>_s<seed>_<hash>``: the hash covers every value of the
        cell, so that a changed option gives a new cell instead of reusing an old result."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        h = hashlib.sha1(blob.encode()).hexdigest()[:8]
        return f"m{self.measurement}_{self.method}_{self.setting}_s{self.seed}_{h}"

    def solver_seed(self) -> int:
        """The solver's generator seed: a function of (seed, measurement) only, so every method and
        setting of one measurement and seed starts from the same seed (common random numbers)."""
        return 1_000_003 * int(self.seed) + int(self.measurement)


def _as_list(v, what: str) -> list[int]:
    if isinstance(v, str) and v.strip().isdigit():  # "6" is a count, as 6
        v = int(v)
    if isinstance(v, int):
        if v < 1:
            raise ValueError(f"{what}: expected a positive count or a list, got {v}")
        return list(range(v))
    if isinstance(v, str):  # "0-3" or "0,2,5"
        out = []
        for part in v.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
        return out
    out = [int(x) for x in v]
    if not out:
        raise ValueError(f"{what}: empty")
    return out


@dataclass
class Study:
    """A study grid. ``methods``: ``{label: options}`` where ``options`` may hold ``method`` (the
    registry name, default the label); ``problem``: ``{"kind": "image" | "gmm", ...}`` (see
    :data:`PROBLEM_KINDS`); ``measurements``: indices (or a count); ``settings``: ``{name: overrides}``
    (default one setting ``"default"`` without overrides); ``seeds``: solver seeds; ``samples``:
    posterior draws per cell. ``cpus_per_task`` / ``gpus_per_task``: the resources each Ray task asks
    for (the in-process backend runs torch on ``cpus_per_task`` threads too, so both backends compute
    the same numbers); ``max_retries``: Ray retries of a task whose worker died."""

    methods: dict
    problem: dict = field(default_factory=lambda: {"kind": "image"})
    measurements: list = field(default_factory=lambda: [0])
    settings: dict = field(default_factory=lambda: {"default": {}})
    seeds: list = field(default_factory=lambda: [0])
    samples: int = 8
    name: str = "study"
    cpus_per_task: float = 1
    gpus_per_task: float = 0
    max_retries: int = 2

    def __post_init__(self):
        self.measurements = _as_list(self.measurements, "measurements")
        self.seeds = _as_list(self.seeds, "seeds")
        if not self.methods:
            raise ValueError("a study needs at least one method")
        self.methods = {str(k): dict(v or {}) for k, v in dict(self.methods).items()}
        self.settings = {str(k): dict(v or {}) for k, v in dict(self.settings or {"default": {}}).items()}
        self.problem = self._full_problem(self.problem)
        if int(self.samples) < 2:
            raise ValueError(f"samples must be >= 2 (coverage needs draws), got {self.samples}")
        if float(self.cpus_per_task) <= 0 or float(self.gpus_per_task) < 0 or int(self.max_retries) < 0:
            raise ValueError("cpus_per_task must be > 0, gpus_per_task >= 0 and max_retries >= 0")
        for label, opts in self.methods.items():
            from ..methods import method_key

            opts["method"] = method_key(opts.get("method", label))  # unknown method -> ValueError now
        for sname, over in self.settings.items():
            self._full_problem({**self.problem, **{k: v for k, v in over.items() if k not in _SETTING_KEYS}},
                               where=f"setting {sname!r}")
            if not isinstance(over.get("options", {}), dict):
                raise ValueError(f"setting {sname!r}: options must be a table of solver options")

    @staticmethod
    def _full_problem(problem: dict, where: str = "problem") -> dict:
        problem = dict(problem or {})
        kind = problem.pop("kind", "image")
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"{where}: kind must be one of {sorted(PROBLEM_KINDS)}, got {kind!r}")
        unknown = set(problem) - set(PROBLEM_KINDS[kind])
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} for kind {kind!r}; allowed: "
                             f"{sorted(PROBLEM_KINDS[kind])}")
        return {"kind": kind, **copy.deepcopy(PROBLEM_KINDS[kind]), **problem}

    def cells(self) -> list[Cell]:
        """Every cell, measurement-major (measurement, setting, method, seed)."""
        out = []
        for m in self.measurements:
            for sname, over in self.settings.items():
                prob = {**self.problem, **{k: v for k, v in over.items() if k not in _SETTING_KEYS}}
                n = int(over.get("samples", self.samples))
                for label, opts in self.methods.items():
                    o = {k: v for k, v in opts.items() if k != "method"}
                    o.update(over.get("options", {}))
                    for s in self.seeds:
                        out.append(Cell(int(m), label, sname, int(s), opts["method"], o, prob, n))
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Study:
        """From the layout of a study file: top-level ``name``, ``samples``, ``seeds``,
        ``measurements``; tables ``problem``, ``methods``, ``settings``, ``resources``
        (``cpus_per_task``, ``gpus_per_task``, ``max_retries``)."""
        d = dict(d)
        res = dict(d.pop("resources", {}) or {})
        known = {"methods", "problem", "measurements", "settings", "seeds", "samples", "name"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"study file: unknown keys {sorted(unknown)}; allowed: {sorted(known | {'resources'})}")
        bad = set(res) - {"cpus_per_task", "gpus_per_task", "max_retries"}
        if bad:
            raise ValueError(f"study file: unknown [resources] keys {sorted(bad)}")
        if "methods" not in d:
            raise ValueError("study file: a [methods] table is required, e.g. [methods.ddrm] steps = 50")
        return cls(**d, **res)


def load_study(path) -> Study:
    """A :class:`Study` from a TOML file (``tomllib``, Python >= 3.11), a YAML or a JSON file of the same layout."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    if p.suffix.lower() == ".json":
        return Study.from_dict(json.loads(p.read_text()))
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml  # PyYAML comes with huggingface_hub, a dependency of diffusers

        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return Study.from_dict(d)
    try:
        import tomllib
    except ModuleNotFoundError as e:  # pragma: no cover - Python 3.10
        raise ValueError("reading a TOML study file needs Python >= 3.11 (tomllib); use a .json file") from e
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from e
    return Study.from_dict(d)
