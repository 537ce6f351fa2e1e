"""The one resume policy (spectral.resume) on its own: what continues, what is refused and how it says so."""

from __future__ import annotations

import json

import pytest

from spectral.errors import SpectralError
from spectral.resume import previous


def _previous(out, read=lambda: "results", **kw):
    return previous(out, "settings.json", read, lambda saved: saved == {"a": 1}, what="widgets", **kw)


def test_nothing_there_is_a_fresh_start_and_the_same_settings_continue(tmp_path):
    assert _previous(tmp_path) is None
    (tmp_path / "settings.json").write_text(json.dumps({"a": 1}))
    assert _previous(tmp_path) == "results"


def test_other_settings_are_refused_by_default_naming_the_directory(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"a": 2}))
    with pytest.raises(SpectralError) as err:
        _previous(tmp_path)  # overwrite defaults to False: refused
    assert str(err.value) == (
        f"{tmp_path} holds widgets of other settings; choose another --out or pass --overwrite to replace them"
    )
    assert _previous(tmp_path, overwrite=True) is None  # replaced


def test_unreadable_settings_or_results_are_refused_naming_the_file(tmp_path):
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(
        SpectralError, match=r"settings\.json cannot be read .*move the directory away or pass --overwrite$"
    ):
        _previous(tmp_path)
    (tmp_path / "settings.json").write_text(json.dumps({"a": 1}))

    def broken():
        raise KeyError("column")

    with pytest.raises(SpectralError) as err:
        _previous(tmp_path, read=broken)
    assert str(err.value) == (
        f"{tmp_path}: the widgets there cannot be read (KeyError: 'column'); move the directory away or pass --overwrite"
    )
