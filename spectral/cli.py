"""One command-line vocabulary for every stage.

- A run is named by a positional ``RUN_DIR``; each stage writes under it (see :mod:`spectral.layout`).
- Settings come from the stage's config dataclass: one flag per field (``--max-grad-norm`` for
  ``max_grad_norm``), its type, default and choices taken from the dataclass, so CLI and Python API
  cannot drift apart.
- Flags every stage shares (``--no-progress``, ``--device``) are defined here once.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_dir(p: argparse.ArgumentParser, help: str = "the run directory") -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help=help)


def add_common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """Flags shared by every stage (``--device`` where the stage computes with torch); call
    :func:`use_threads` with the parsed arguments."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch [the cores this process may use that are not busy, at least 1: "
        "two jobs on two cores then take one each instead of slowing each other about 4x]",
    )
    if device:
        p.add_argument(
            "--device", default="auto", help="where to compute: auto (CUDA when available), cpu, cuda or cuda:N [auto]"
        )


def free_cores(sample_seconds: float = 0.2) -> int:
    """The cores this process may run on that are not busy now (under half used over ``sample_seconds``),
    at least 1. OpenMP threads spin-wait for a core another process holds, so more threads than free
    cores is slower than fewer (measured: ``python -m spectral.bench threads``)."""
    import os

    import psutil

    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    busy = psutil.cpu_percent(interval=sample_seconds, percpu=True)
    return max(1, sum(1 for c in allowed if c < len(busy) and busy[c] < 50))


def use_threads(args: argparse.Namespace) -> int:
    """Set torch's (and through it OpenMP's) thread count from ``--threads`` or :func:`free_cores`;
    returns it (collect records it in the manifest)."""
    import torch

    n = args.threads if getattr(args, "threads", None) else free_cores()
    if n < 1:
        from .errors import SpectralError

        raise SpectralError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n


def quiet_library_warnings() -> None:
    """For entry points only (process-wide): Opacus' per-step backward-hook notice says nothing a
    user can act on."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(full_backward_hook|Using a non-full backward hook).*")


def _default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _scalar(tp):
    """(element type, is a sequence) of a field type such as ``int | None`` or ``tuple``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _scalar(args[0])
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple):
        return (args[0] if args else None), True
    return tp, False


def add_config(
    p: argparse.ArgumentParser,
    config_cls,
    help: dict,
    choices: dict | None = None,
    title: str = "settings (default in brackets)",
) -> None:
    """One flag per field of ``config_cls``; unset flags are left out of the namespace (SUPPRESS),
    so the dataclass (or a config file) supplies the default."""
    hints = typing.get_type_hints(config_cls)
    group = p.add_argument_group(title)
    for f in fields(config_cls):
        if f.name not in help:
            continue
        default = _default(f)
        kind, many = _scalar(hints[f.name])
        if kind is None:  # a bare list/tuple: its default says what it holds
            kind = type(default[0]) if default else str
        shown = " ".join(map(str, default)) if many and default else default
        kwargs = dict(default=argparse.SUPPRESS, help=f"{help[f.name]} [{shown}]", dest=f.name)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if many:
                kwargs["nargs"] = "+"
        if choices and f.name in choices:
            kwargs["choices"] = choices[f.name]
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_values(args: argparse.Namespace, config_cls) -> dict:
    """The fields of ``config_cls`` given on the command line (tuples where the field holds one)."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in fields(config_cls):
        if f.name in vars(args):
            value = getattr(args, f.name)
            origin = typing.get_origin(hints[f.name]) or hints[f.name]
            values[f.name] = tuple(value) if origin is tuple and isinstance(value, list) else value
    return values
