"""Where tensors live: ``--device auto|cpu|cuda[:i]``, one rule for every stage.

``auto`` is the first CUDA device when torch sees one, else the CPU. The device is a runtime
setting, not part of a run's config: it changes where the arithmetic happens, not what is computed,
so a run collected on a GPU can be resumed or analysed on a CPU.
"""

from __future__ import annotations

import torch

from .errors import SpectralError

DEVICES = "auto, cpu, cuda or cuda:N"
CPU = torch.device("cpu")  # the default of inner layers: stages resolve --device and pass a torch.device down


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device named by ``spec``; a device this machine lacks is one clear error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SpectralError(f"unknown device {spec!r}; use {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise SpectralError(f"unsupported device {spec!r}; use {DEVICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpectralError(
                f"device {spec!r}: CUDA is not available here (torch {torch.__version__}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpectralError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
