"""Principal angles between two runs' top-k subspaces (``python -m spectral.compare``).

Examples
--------
  python -m spectral.compare runs/b128-s1 runs/b128-s2 --k 10 100        # two seeds
  python -m spectral.compare runs/ladder-s1 runs/ladder-s1 --stream-b probe1000   # two streams of one run

Cosines of the principal angles between span(top-k components of A's stream) and B's, from the cross
Gram matrix accumulated in one pass over both stores (:mod:`spectral.analyse.angles`; no d × k array in
memory), and the energy of each run's rows that the other's top k captures. Writes
``RUN_A/analysis/<stream>/compare/<name of B>.json`` with a figure of the cosines and its data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import jsonio
from ..errors import SpectralError
from ..layout import RunDir


def compare(run_a, run_b, stream: str = "clipped", stream_b: str | None = None, ks=(10, 100), out=None,
            max_memory=None, progress=True, device="auto") -> dict:  # fmt: skip
    """Principal angles between the top-k subspaces of ``stream`` of ``run_a`` and ``stream_b`` (default:
    the same stream) of ``run_b``; writes and returns the result (module docstring)."""
    from ..analyse.angles import principal_angles, stacked_gram
    from ..analyse.backends import make_ops
    from ..device import resolve_device
    from ..store import open as open_store

    stream_b = stream_b or stream
    a, b = RunDir(run_a), RunDir(run_b)
    store_a, store_b = open_store(a.store), open_store(b.store)
    for s, st in ((stream, store_a), (stream_b, store_b)):
        st.check_stream(s)
    if any(k < 1 for k in ks):
        raise SpectralError(f"k must be at least 1, got {list(ks)}")
    K = stacked_gram(store_a, stream, store_b, stream_b, max_memory, progress, make_ops(resolve_device(device)))
    name = b.root.resolve().name + (f"@{stream_b}" if stream_b != stream else "")
    result = {
        "run_a": str(a.root.resolve()),
        "stream_a": stream,
        "run_b": str(b.root.resolve()),
        "stream_b": stream_b,
        "n_a": store_a.n_steps,
        "n_b": store_b.n_steps,
        "d": store_a.d,
        "angles": principal_angles(K, store_a.n_steps, ks),
    }
    out = Path(out) if out else a.analysis(stream) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(jsonio.dumps(result, indent=1))
    draw(result, out / name)
    return result


def draw(result: dict, stem: Path) -> None:
    """The cosines against their index, one line per k, saved with its data."""
    from ..plotting import COLORS, new_figure, save, style

    frame = pd.DataFrame(
        [{"k": r["k"], "index": i + 1, "cosine": c} for r in result["angles"] for i, c in enumerate(r["cosines"])]
    )
    with style():
        fig, ax = new_figure()
        for i, r in enumerate(result["angles"]):
            cos = np.asarray(r["cosines"])
            ax.plot(np.arange(1, len(cos) + 1), cos, color=COLORS[i % 10], lw=1.4,
                    label=f"k = {r['k']}: A in B's top k {r['energy_a_in_b']:.2f}, B in A's {r['energy_b_in_a']:.2f}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("principal angle index i")
        ax.set_ylabel("cos θ_i")
        a = Path(result["run_a"]).name + f" [{result['stream_a']}]"
        b = Path(result["run_b"]).name + f" [{result['stream_b']}]"
        ax.set_title(f"principal angles: {a} vs {b}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left", title="energy captured", title_fontsize=7)
    save(fig, stem, {"": frame})
