"""The toy's hyper-parameter grid: every (d, mode, T, lr, seed) run, then the best (T, lr) per (d, mode).

As the paper: (T, lr) is chosen by the mean train loss over seeds, and train and test loss of the
averaged iterate are reported as mean ± std over seeds. Each (T, d) group runs all modes, learning
rates and seeds as one batch of tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import jsonio, layout, resume, theory
from ..device import CPU, resolve_device
from ..errors import SpectralError
from ..store import atomic_write
from .geomedian import (
    ACCOUNTANTS,
    MODES,
    ToyData,
    coefficients,
    dp_gd,
    loss,
    noise_multiplier,
    optimum,
    sensitivity,
    step_noise,
)

PAPER_DIMS = (20, 50, 100, 200, 500, 1000, 2000)
PAPER_STEPS = tuple(10 * 2**i for i in range(10))  # 10 … 5120
PAPER_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


@dataclass
class ToyConfig:
    """The geometric-median experiment (defaults: the paper's grid)."""

    dims: tuple = PAPER_DIMS
    modes: tuple = MODES
    steps: tuple = PAPER_STEPS
    lrs: tuple = PAPER_LRS
    seeds: tuple = (0, 1, 2, 3, 4)
    epsilon: float = 2.0
    delta: float = 1e-6
    g0: float = 3.0
    n_train: int = 10_000
    n_test: int = 10_000
    accountant: str = "advanced"
    seed_code_const: bool = False
    data_seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> ToyConfig:
        """A small grid for tests and the quick reproduction (seconds)."""
        base = dict(
            dims=(20, 200, 2000), steps=(10, 40, 160), lrs=(1e-2, 0.1, 1.0), seeds=(0, 1), n_train=2000, n_test=2000
        )
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise SpectralError(f"unknown accountant {self.accountant!r}; choose from {', '.join(ACCOUNTANTS)}")
        for m in self.modes:
            if m not in MODES:
                raise SpectralError(f"unknown decay mode {m!r}; choose from {', '.join(MODES)}")
        if min(self.dims) < 1 or min(self.steps) < 1 or min(self.lrs) <= 0 or not self.seeds:
            raise SpectralError("dims and steps must be >= 1, learning rates > 0, and at least one seed")
        if self.epsilon <= 0 or not 0 < self.delta < 1:
            raise SpectralError("need epsilon > 0 and 0 < delta < 1")


@dataclass
class ToyResults:
    """``runs``: one row per (mode, d, T, lr, seed); ``best``: one row per (mode, d)."""

    config: ToyConfig
    runs: pd.DataFrame
    best: pd.DataFrame = field(init=False)

    def __post_init__(self):
        self.best = select_best(self.runs)

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "toy_config.json").write_text(jsonio.dumps(asdict(self.config), indent=1))
        for name, frame in (("toy_runs.csv", self.runs), (layout.TOY_BEST, self.best)):
            atomic_write(directory / name, lambda f, frame=frame: f.write(frame.to_csv(index=False).encode()))
        return directory

    @classmethod
    def load(cls, directory) -> ToyResults:
        directory = Path(directory)
        if not (directory / "toy_runs.csv").is_file():
            raise SpectralError(f"{directory} holds no toy results (no toy_runs.csv)")
        config = cls.config_of(json.loads((directory / "toy_config.json").read_text()))
        return cls(config, pd.read_csv(directory / "toy_runs.csv"))

    @staticmethod
    def config_of(saved: dict) -> ToyConfig:
        """The config a toy_config.json records (lists back to tuples)."""
        return ToyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def select_best(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, d): the (T, lr) with the lowest mean train loss, with mean ± std over seeds."""
    stats = (
        runs.groupby(["mode", "d", "T", "lr"])
        .agg(
            train_mean=("train_loss", "mean"),
            train_std=("train_loss", "std"),
            test_mean=("test_loss", "mean"),
            test_std=("test_loss", "std"),
            train_excess_mean=("train_excess", "mean"),
            noise_std=("noise_std", "first"),
            rlc_factor=("rlc_factor", "first"),
            classical_factor=("classical_factor", "first"),
        )
        .reset_index()
    )
    stats = stats.fillna({"train_std": 0.0, "test_std": 0.0})
    best = stats.loc[stats.groupby(["mode", "d"]).train_mean.idxmin()]
    order = {m: i for i, m in enumerate(MODES)}
    return best.sort_values(["mode", "d"], key=lambda c: c.map(order) if c.name == "mode" else c).reset_index(drop=True)


COLUMNS = [
    "mode",
    "d",
    "T",
    "lr",
    "seed",
    "train_loss",
    "test_loss",
    "train_excess",
    "noise_std",
    "rlc_factor",
    "classical_factor",
]


def _combine(done: pd.DataFrame, rows: list) -> pd.DataFrame:
    new = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([done, new], ignore_index=True) if len(done) else new


def group_rows(config: ToyConfig, data: ToyData, T: int, d: int, multiplier: float, batches, lrs, dtype, device):
    """One (T, d) group: every mode, learning rate and seed in one batched DP-GD; a row of COLUMNS each."""
    b_train, b_test = batches
    a_np = np.stack([coefficients(d, m, config.g0, config.seed_code_const) for m in config.modes])
    sens = [sensitivity(a, config.n_train, config.g0, seed_code=config.seed_code_const) for a in a_np]
    std = torch.tensor(sens, dtype=dtype, device=device) * multiplier
    a = torch.tensor(a_np, dtype=dtype, device=device)
    noise = step_noise(config.seeds, T, d, dtype).to(device)
    with torch.no_grad():
        avg = dp_gd(a, b_train, lrs, noise, std)  # (M, L, S, d)
        M, L, S, _ = avg.shape
        flat, aa = avg.reshape(-1, d), a[:, None, None].expand(M, L, S, d).reshape(-1, d)
        # a diverged run (too large a learning rate) counts as infinitely bad, not as missing
        train = np.nan_to_num(loss(flat, aa, b_train).double().reshape(M, L, S).cpu().numpy(), nan=np.inf)
        test = np.nan_to_num(loss(flat, aa, b_test).double().reshape(M, L, S).cpu().numpy(), nan=np.inf)
    rows = []
    for i, mode in enumerate(config.modes):
        _, f_star = optimum(a_np[i], data.train)
        # G_k of this mode: the largest coefficient outside the top-k coordinates
        g = np.append(np.sort(a_np[i])[::-1], 0.0)
        factor, classical = theory.dimension_factor(g, d), theory.classical_factor(g[0], d)
        for j, lr in enumerate(config.lrs):
            for s, seed in enumerate(config.seeds):
                rows.append((mode, d, T, lr, seed, train[i, j, s], test[i, j, s], train[i, j, s] - f_star,
                             sens[i] * multiplier, factor, classical))  # fmt: skip
    return rows


def run_grid(
    config: ToyConfig | None = None,
    out=None,
    progress: bool = True,
    dtype=torch.float32,
    device: torch.device = CPU,
    overwrite: bool = False,
) -> ToyResults:
    """Run every (d, mode, T, lr, seed) of ``config``; one batched DP-GD per (T, d).

    With ``out``, results are saved there after every (T, d) group, and a rerun with the same
    config continues after the groups already done; results of another config there are refused unless
    ``overwrite`` (:mod:`spectral.resume`). ``device``: where the batched DP-GD runs (the
    noise is drawn on the CPU, so every device sees the same noise).
    """
    device = torch.device(device)  # resolved by the stage, toy(): "auto" is not a device here
    config = config or ToyConfig()
    config.validate()
    done = pd.DataFrame(columns=COLUMNS)
    if out is not None:  # the one resume policy (spectral.resume): same config continues, other is refused
        out = Path(out)
        runs = resume.previous(out, "toy_config.json", lambda: ToyResults.load(out).runs,
                               lambda saved: ToyResults.config_of(saved) == config, what="toy results",
                               overwrite=overwrite)  # fmt: skip
        done = done if runs is None else runs
    data = ToyData.sample(config.n_train, config.n_test, seed=config.data_seed)
    b_train = torch.tensor(data.train, dtype=dtype, device=device)
    b_test = torch.tensor(data.test, dtype=dtype, device=device)
    lrs = torch.tensor(config.lrs, dtype=dtype, device=device)
    rows = []
    work = sum(config.steps) * len(config.dims)
    bar = tqdm(total=work, desc="toy grid", unit="step", disable=not progress)
    finished = set(zip(done["T"], done["d"]))
    for T in config.steps:
        multiplier = noise_multiplier(config.epsilon, config.delta, T, config.accountant)
        for d in config.dims:
            if (T, d) in finished:
                bar.update(T)
                continue
            rows += group_rows(config, data, T, d, multiplier, (b_train, b_test), lrs, dtype, device)
            if out is not None:
                ToyResults(config, _combine(done, rows)).save(out)
            bar.update(T)
    bar.close()
    results = ToyResults(config, _combine(done, rows))
    if out is not None:
        results.save(out)
    return results


def toy(
    run, config: ToyConfig | None = None, progress: bool = True, device="auto", overwrite: bool = False
) -> ToyResults:
    """The toy stage: run the grid into the run directory's ``toy/`` (``toy-seedcode/`` for the seed
    code's const mode), continuing where an earlier call stopped."""
    from ..layout import RunDir

    config, device = config or ToyConfig(), resolve_device(device)
    out = RunDir(run).toy(config.seed_code_const)
    return run_grid(config, out=out, progress=progress, device=device, overwrite=overwrite)
