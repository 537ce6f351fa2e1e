"""The package's import layering: data flows collect -> store -> analyse -> report and never back.

Each package may import only the layers listed for it (its own modules always); checked on the source
with ``ast``, so a new upward import fails here before it can tangle the stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

SPECTRAL = Path(__file__).resolve().parents[1] / "spectral"
BASE = {
    "errors",
    "layout",
    "device",
    "cli",
    "plotting",
    "configs",
    "jsonio",
    "entry",
    "resume",
}  # leaf modules every layer may use
ALLOWED = {
    "errors": set(),
    "layout": set(),
    "plotting": {"jsonio"},
    "resume": {"errors"},
    "jsonio": set(),
    "configs": {"errors"},
    "device": {"errors"},
    "cli": {"errors"},
    "store": {"errors", "layout", "jsonio"},
    "dp": BASE | {"store"},
    "collect": BASE | {"dp", "store"},
    "analyse": BASE | {"store"},
    "theory": BASE,
    "toy": BASE | {"store", "theory"},
    "retrain": BASE | {"dp", "store", "analyse"},
    "report": BASE | {"theory", "analyse", "toy"},  # public APIs only: Spectrum, the toy's mode names
    "bench": BASE | {"dp", "collect", "store", "analyse", "retrain"},
    "repro": BASE | {"collect", "analyse", "toy", "retrain", "report"},
    "compare": BASE | {"store", "analyse"},
    "entry": set(),
    "api": BASE | {"collect", "analyse", "retrain", "report", "toy", "store"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(SPECTRAL)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(path: Path, source: str | None = None) -> set[str]:
    """The layers ``path`` (a module inside spectral/) imports; ``source`` overrides its text."""
    layers, depth_pkg = set(), len(path.relative_to(SPECTRAL).parts) - 1
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the spectral package, then name the layer
                up = node.level - depth_pkg
                if up < 1:  # inside its own package
                    continue
                names = (node.module or "").split(".") if node.module else [a.name for a in node.names]
                layers.add(names[0] if node.module else names[0])
            elif node.module and node.module.startswith("spectral."):
                layers.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            layers |= {a.name.split(".")[1] for a in node.names if a.name.startswith("spectral.")}
    return layers - {"__version__"}


def test_no_module_imports_above_its_layer():
    bad = []
    for path in sorted(SPECTRAL.rglob("*.py")):
        layer = _layer(path)
        if layer == "__init__":
            continue
        allowed = ALLOWED[layer] | ({"report"} if path.name == "__main__.py" else set())  # a CLI may draw
        extra = _imported_layers(path) - allowed - {layer}
        if extra:
            bad.append(f"{path.relative_to(SPECTRAL)} ({layer}) imports {sorted(extra)}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import():
    """The check can fail: a store module importing the analyse stage is caught."""
    upward = "from ..analyse import principal_components\nfrom spectral.report import fits\n"
    assert _imported_layers(SPECTRAL / "store" / "reader.py", upward) == {"analyse", "report"}
    assert not {"analyse", "report"} & ALLOWED["store"]


# ---------------------------------------------------------------------- file names
def _layout_names() -> set[str]:
    import spectral.layout as layout

    return {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)} | {"-seedcode"}


def _spelled_names(source: str, names: set[str]) -> list[tuple[int, str]]:
    """String literals (docstrings aside) that spell a file name ``layout.py`` owns."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value in names
    ]


def test_file_names_that_cross_stages_are_spelled_only_in_layout():
    names, bad = _layout_names(), []
    for path in sorted(SPECTRAL.rglob("*.py")):
        if path.name != "layout.py":
            bad += [
                f"{path.relative_to(SPECTRAL)}:{line} spells {value!r}"
                for line, value in _spelled_names(path.read_text(), names)
            ]
    assert not bad, "use the spectral.layout constant instead:\n" + "\n".join(bad)


def test_the_file_name_check_sees_a_literal():
    source = '"""components.npy in a docstring is fine."""\npath = root / "components.npy"\ntwin = f"{x}-seedcode"\n'
    assert _spelled_names(source, _layout_names()) == [(2, "components.npy"), (3, "-seedcode")]


def test_json_written_by_the_toolkit_is_strict():
    import numpy as np

    from spectral import jsonio

    text = jsonio.dumps({"nan": float("nan"), "inf": [np.float32(np.inf)], "x": np.float64(1.5), "a": np.arange(2)})
    assert text == '{"nan": null, "inf": [null], "x": 1.5, "a": [0, 1]}'


def test_committed_json_is_strict():
    """Every JSON file committed beside the figures and benchmarks parses without NaN or Infinity (which
    strict parsers such as jq and browsers reject); the toolkit writes null there."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    files = [p for d in ("figures", "benchmarks") for p in (SPECTRAL.parent / d).rglob("*.json")]
    assert files
    for path in files:
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except ValueError as exc:
            raise AssertionError(f"{path.relative_to(SPECTRAL.parent)}: {exc}") from None


def test_experiments_use_no_private_part_of_the_package():
    """The studies in experiments/ are written as a user writes them: nothing from a CLI's ``__main__``
    and no underscore name."""
    offending = []
    for path in sorted((SPECTRAL.parent / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spectral"):
                names = [a.name for a in node.names]
                if "__main__" in node.module or any(n.startswith("_") for n in names):
                    offending.append(f"{path.name}: from {node.module} import {', '.join(names)}")
    assert not offending, offending


def test_functions_and_files_stay_short():
    """One job per function: none over 60 lines in spectral/ outside the benchmarks, no file over 500."""
    long_functions, long_files = [], []
    for path in sorted(SPECTRAL.rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > 500:
            long_files.append(path.name)
        if "bench" in path.parts:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(SPECTRAL)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long_functions and not long_files, (long_functions, long_files)
