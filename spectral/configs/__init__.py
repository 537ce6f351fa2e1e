"""Run configurations shipped with the package (read with :func:`load`); ``experiments/`` holds the
same files for readers of a checkout, and a test keeps the two identical.

  collect_quick.toml                 ``repro --scale quick``: 300 DP steps on the embedded default
  collect_cpu.toml                   ``repro --scale cpu``: the CPU-faithful run in which DP learns
  collect_paper.toml                 ``repro --scale paper``: roberta-base, the paper's settings (GPU)
  collect_paper_distilroberta.toml   the authors' May-2022 variant
"""

from __future__ import annotations

from importlib import resources

import tomllib

from ..errors import SpectralError


def names() -> list[str]:
    """The shipped configuration files."""
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def find(name: str):
    """The shipped file ``name`` (``collect_cpu.toml``, or ``cpu`` for short), or None."""
    for candidate in (name, f"{name}.toml", f"collect_{name}.toml"):
        path = resources.files(__name__) / candidate
        if path.is_file():
            return path
    return None


def load(name: str) -> dict:
    """The settings of the shipped configuration ``name``; a missing one is one clear error."""
    path = find(name)
    if path is None:
        raise SpectralError(
            f"no packaged configuration {name!r} (this installation of spectral ships {', '.join(names()) or 'none'}); "
            "reinstall spectral"
        )
    return tomllib.loads(path.read_text())


def read(path) -> dict:
    """Settings from a TOML file, or from the shipped configuration of that name (``cpu``)."""
    from pathlib import Path

    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        if find(str(path)) is not None:
            return load(str(path))
        raise SpectralError(
            f"config file {path} does not exist (shipped configurations: {', '.join(names())})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpectralError(f"config file {path} is not valid TOML: {exc}") from None
