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
    import tomllib

    from spectral.dp.config import CollectConfig

    for scale, plan in repro.SCALES.items():
        if isinstance(plan["collect"], str):
            shipped = configs.load(plan["collect"])
            # the checkout's file, setting for setting, and a config the collect stage accepts
            assert shipped == tomllib.loads((EXPERIMENTS / configs.find(plan["collect"]).name).read_text()), scale
            cfg = CollectConfig.from_dict(shipped).validate()
            assert all(getattr(cfg, k) == (tuple(v) if isinstance(getattr(cfg, k), tuple) else v)
                       for k, v in shipped.items()), scale  # fmt: skip


def test_a_missing_config_is_one_clear_error():
    with pytest.raises(SpectralError, match="no packaged configuration 'nope'.*collect_cpu.toml"):
        configs.load("nope")
    assert configs.load("cpu") == configs.load("collect_cpu.toml")
