"""The run directory: where each stage writes, and the files that cross stage boundaries.

One run directory holds everything about one collect run, each stage in its own place::

    RUN/                          the trajectory store (python -m spectral.collect RUN)
      manifest.json, steps.csv, eval.csv, streams/, checkpoint/, attachments/
      analysis/<stream>/          python -m spectral.analyse RUN  (spectrum.csv, components.npy, ...)
      analysis/<stream>@B<b>/     python -m spectral.analyse RUN --batch-size b  (the same, predicted)
      retrain/<setting>/          python -m spectral.retrain RUN  (retrain_history.csv, ...)
      toy/, toy-seedcode/         python -m spectral.toy RUN      (toy_best.csv, ...)
      figures/                    python -m spectral.report RUN   (fig*.png/pdf + data, fits.json)

Every stage, study and benchmark finds its inputs through :class:`RunDir`; nothing spells these paths
out again. This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

from pathlib import Path

# files read by a later stage
MANIFEST = "manifest.json"
SPECTRUM = "spectrum.csv"
SUMMARY = "summary.json"
DENSITY_KDE = "density_kde.csv"
DENSITY_PAPER = "density_paper.csv"
DENSITY_SLQ = "density_slq.csv"
RLC_IN_SAMPLE = "rlc_in_sample.csv"
RLC_HELD_OUT = "rlc_held_out.csv"
RLC_STEPS = "rlc_steps.csv"
COMPONENTS = "components.npy"
RETRAIN_HISTORY = "retrain_history.csv"
RETRAIN_SUMMARY = "retrain_summary.json"
TOY_BEST = "toy_best.csv"
FITS = "fits.json"
GROUPS = "groups.csv"  # analyse --groups: per-group eigenvalues (spectral.analyse.groups)
GROUPS_SUMMARY = "groups_summary.csv"
GROUPS_RLC = "groups_rlc_in_sample.csv"
# probe streams (collect --probe-batches): probe128, probe1000, ... (see spectral.dp.probes)
PROBE_PREFIX = "probe"


def probe_stream(size: int) -> str:
    """``probe1000``: the stream of the mean over the first ``size`` probe examples of each step."""
    return f"{PROBE_PREFIX}{size}"


def probe_sizes(streams) -> list[int]:
    """The probe batch sizes among store ``streams``, increasing (``[]`` when there are none)."""
    return sorted(int(s[len(PROBE_PREFIX) :]) for s in streams if s.startswith(PROBE_PREFIX))


class RunDir:
    """Paths of one run directory (see the module docstring); creating one touches nothing on disk."""

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def store(self) -> Path:
        """The trajectory store (the run directory itself)."""
        return self.root

    def has_store(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def analysis(self, stream: str = "clipped", batch: str | None = None) -> Path:
        """``RUN/analysis/<stream>``, or with ``batch`` (``B1000``, ``Binf``) the prediction at that
        batch size, ``RUN/analysis/<stream>@B1000``."""
        return self.root / "analysis" / (f"{stream}@{batch}" if batch else stream)

    def retrain(self, setting: str | None = None) -> Path:
        """``RUN/retrain`` or one setting's directory in it (e.g. ``signal-trajectory``)."""
        return self.root / "retrain" / setting if setting else self.root / "retrain"

    def toy(self, seed_code: bool = False) -> Path:
        return self.root / ("toy-seedcode" if seed_code else "toy")

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def seed_code_twin(toy_dir) -> Path:
    """Where the toy's seed-code variant sits beside a toy directory (``toy`` → ``toy-seedcode``)."""
    toy_dir = Path(toy_dir)
    return toy_dir.parent / f"{toy_dir.name}-seedcode"
