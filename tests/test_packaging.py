"""The configurations the code reads ship inside the package; experiments/ keeps identical copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectral import configs, repro
from spectral.errors import SpectralError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_packaged_configs_equal_the_experiments_copies():
    shipped = configs.names()
    assert shipped == sorted(p.name for p in EXPERIMENTS.glob("*.toml"))
    for name in shipped:
        assert (configs.find(name).read_bytes()) == (EXPERIMENTS / name).read_bytes(), name


def test_every_config_repro_reads_is_shipped():
    for scale, plan in repro.SCALES.items():
        if isinstance(plan["collect"], str):
            assert configs.load(plan["collect"]), scale


def test_a_missing_config_is_one_clear_error():
    with pytest.raises(SpectralError, match="no packaged configuration 'nope'.*collect_cpu.toml"):
        configs.load("nope")
    assert configs.load("cpu") == configs.load("collect_cpu.toml")
