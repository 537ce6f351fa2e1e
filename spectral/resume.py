"""One resume policy for every stage: what a rerun into the same output keeps, recomputes and refuses.

A stage's output directory records the settings that made it. Running the stage again into it:

kept        results made with the same settings: a rerun continues after them (more seeds or steps of the
            same setting count as the same setting) and recomputes nothing that is complete;
recomputed  only what is missing: collect's steps after the last commit (the step in flight when a run
            stopped is redone from the committed state), retraining's unfinished (variant, seed) runs, the
            toy's unfinished (T, d) groups, analyse's unfinished passes (a finished Gram serves any k);
refused     results of other settings, with "<out> holds <what> of other settings; choose another --out or
            pass --overwrite to replace them"; and results that cannot be read, with "<out>: <file> cannot
            be read (<why>); ...": never silently restarted over, never mixed.

Per stage: ``collect`` continues only when asked (``--resume``: its settings are the stored ones; a
setting given with ``--resume`` must equal the stored one) and otherwise refuses an existing store unless
``--overwrite``; ``retrain`` and ``toy`` continue a directory of the same settings by themselves (a rerun
of the same command is how a stopped job continues); ``analyse`` keys its per-pass checkpoints on the
store's identity (its path, steps and stream), so a checkpoint of another store or of more steps is never
used (:func:`spectral.analyse.solvers.load_checkpoint`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import SpectralError

T = TypeVar("T")


def refuse_other_settings(out: Path, what: str) -> SpectralError:
    return SpectralError(
        f"{out} holds {what} of other settings; choose another --out or pass --overwrite to replace them"
    )


def previous(out: Path, settings_file: str, read: Callable[[], T], same: Callable[[dict], bool], *,
             what: str, overwrite: bool = False) -> T | None:  # fmt: skip
    """The results already in ``out`` when they were made with the same settings, else None.

    ``settings_file``: the JSON of settings in ``out``; ``same(saved)``: whether they are this run's;
    ``read()``: the results. Nothing there: None (a fresh start). Other settings: refused unless
    ``overwrite`` (then None: they are replaced). Unreadable settings or results: refused, naming the file.
    """
    path = Path(out) / settings_file
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpectralError(
            f"{out}: {settings_file} cannot be read ({exc}); move the directory away or pass --overwrite"
        ) from None
    if not same(saved):
        if overwrite:
            return None
        raise refuse_other_settings(Path(out), what)
    try:
        return read()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpectralError(
            f"{out}: the {what} there cannot be read ({type(exc).__name__}: {exc}); "
            "move the directory away or pass --overwrite"
        ) from None
