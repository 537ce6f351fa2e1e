"""Labelled text data: local files, the SPECTRAL_DATA directory, or a Hugging Face dataset.

Resolution of ``--data``:
1. a path: a directory with ``train.{tsv,csv,jsonl}`` (and optionally ``dev``/``validation``/
   ``test``), or one CSV/TSV/JSONL file (a held-out part becomes the dev split);
2. not given: ``$SPECTRAL_DATA/sst2`` (GLUE SST-2 as TSV files) when the variable is set;
3. otherwise a Hugging Face dataset, ``NAME`` or ``NAME:CONFIG`` (default ``glue:sst2``),
   downloaded with the ``datasets`` library.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SpectralError

TEXT_COLUMNS = ("sentence", "text", "content", "review", "document")
LABEL_COLUMNS = ("label", "labels")
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
DEV_NAMES = ("dev", "validation", "valid", "test")
DEFAULT_HUB = "glue:sst2"


@dataclass
class TextData:
    """One split: ``texts[i]`` has integer class ``labels[i]`` in ``[0, n_classes)``."""

    texts: list
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> TextData:
        return self if n is None else TextData(self.texts[:n], self.labels[:n])

    def rows(self, start: int, stop: int | None = None) -> TextData:
        """Examples ``[start, stop)`` (e.g. to set a public part aside)."""
        return TextData(self.texts[start:stop], self.labels[start:stop])


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL file into a DataFrame (TSV as GLUE writes it: no quoting)."""
    try:
        if path.suffix == ".tsv":
            return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
        if path.suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpectralError(f"cannot read {path}: {exc}") from None
    raise SpectralError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")


def _pick(columns, wanted: str | None, candidates, what: str, source) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise SpectralError(f"{source}: no {what} column {wanted!r}; columns are {list(columns)}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise SpectralError(
        f"{source}: no {what} column found (looked for {', '.join(candidates)}; columns are {list(columns)}); "
        f"name it with --{what}-column"
    )


def frame_to_splits(frames: dict, text_column, label_column, source) -> tuple[TextData, TextData, dict]:
    """Turn ``{"train": df, "dev": df}`` into :class:`TextData` with one shared label encoding."""
    train = frames["train"]
    if len(train) == 0:
        raise SpectralError(f"{source}: the training data is empty")
    # each split picks its own columns (GLUE's SST-2 calls the text `sentence` in train, `content` in dev)
    cols = {
        name: (
            _pick(df.columns, text_column, TEXT_COLUMNS, "text", f"{source} ({name} split)"),
            _pick(df.columns, label_column, LABEL_COLUMNS, "label", f"{source} ({name} split)"),
        )
        for name, df in frames.items()
    }
    tcol, lcol = cols["train"]
    classes = sorted(pd.unique(train[lcol]).tolist(), key=str)
    if len(classes) < 2:
        raise SpectralError(f"{source}: the training labels have only one class ({classes})")
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for name in ("train", "dev"):
        df, (t, lab) = frames[name], cols[name]
        unknown = set(pd.unique(df[lab]).tolist()) - set(index)
        if unknown:
            raise SpectralError(f"{source} ({name} split): labels {sorted(unknown, key=str)[:5]} do not occur in train")
        splits.append(TextData([str(x) for x in df[t]], np.array([index[v] for v in df[lab]], dtype=np.int64)))
    info = {
        "source": str(source),
        "text_column": tcol,
        "label_column": lcol,
        "classes": [str(c) for c in classes],
        "n_train": len(splits[0]),
        "n_dev": len(splits[1]),
    }
    return splits[0], splits[1], info


def _find(directory: Path, names) -> Path | None:
    for name in names:
        for suffix in SUFFIXES:
            if (directory / f"{name}{suffix}").is_file():
                return directory / f"{name}{suffix}"
    return None


def _local_frames(path: Path, seed: int) -> dict:
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise SpectralError(f"{path}: no train.tsv / train.csv / train.jsonl in this directory")
        dev = _find(path, DEV_NAMES)
        frames = {"train": read_table(train)}
        if dev is not None:
            frames["dev"] = read_table(dev)
            return frames
        path, whole = train, frames["train"]
    else:
        whole = read_table(path)
    # one file: hold out up to 10% (at most 1000 rows) as the dev split
    order = np.random.default_rng(seed).permutation(len(whole))
    n_dev = min(1000, len(whole) // 10)
    return {"train": whole.iloc[np.sort(order[n_dev:])], "dev": whole.iloc[np.sort(order[:n_dev])]}


def _hub_frames(name: str) -> dict:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise SpectralError("loading a Hugging Face dataset needs the `datasets` package") from None
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None)
    except Exception as exc:  # datasets raises many types for unknown names / no network
        raise SpectralError(
            f"cannot load dataset {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    dev_split = next((s for s in ("validation", "dev", "test") if s in ds), None)
    if "train" not in ds or dev_split is None:
        raise SpectralError(f"dataset {name!r} needs a train and a validation/test split; it has {list(ds)}")
    return {"train": ds["train"].to_pandas(), "dev": ds[dev_split].to_pandas()}


def resolve_data(spec: str | None) -> tuple[str, Path | None]:
    """Where data comes from: ``("path", Path)`` or ``("hub", None)`` with the resolved spec."""
    if spec is None:
        root = os.environ.get("SPECTRAL_DATA")
        if root:
            path = Path(root).expanduser()
            path = path / "sst2" if (path / "sst2").is_dir() else path
            if not path.is_dir():
                raise SpectralError(f"SPECTRAL_DATA={root} is not a directory")
            return str(path), path
        return DEFAULT_HUB, None
    path = Path(spec).expanduser()
    if path.exists():
        return str(path), path
    if path.suffix in SUFFIXES or spec.startswith((".", "/", "~")):
        raise SpectralError(f"data file {spec} does not exist")
    return spec, None


def load_data(spec: str | None, text_column=None, label_column=None, seed: int = 0) -> tuple[TextData, TextData, dict]:
    """Load ``(train, dev, info)`` following the resolution order in the module docstring."""
    source, path = resolve_data(spec)
    frames = _local_frames(path, seed) if path is not None else _hub_frames(source)
    return frame_to_splits(frames, text_column, label_column, source)


def load_split(cfg) -> tuple[TextData, TextData, dict]:
    """``(train, dev, info)`` as a collect config trains and evaluates on them: its data, columns and
    seed, the first ``train_size`` training and ``eval_size`` dev examples (None: all)."""
    train, dev, info = load_data(cfg.data, cfg.text_column, cfg.label_column, cfg.seed)
    return train.head(cfg.train_size), dev.head(cfg.eval_size), info
