"""``python -m spectral.compare RUN_A RUN_B``: principal angles between two runs' top-k subspaces.

Examples
--------
  python -m spectral.compare runs/b128-s1 runs/b128-s2 --k 10 100        # two seeds
  python -m spectral.compare runs/ladder-s1 runs/ladder-s1 --stream-b probe1000   # two streams of one run
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import cli
from ..errors import cli_entry
from .run import compare


@cli_entry
def main(argv=None):
    p = cli.parser("python -m spectral.compare", __doc__)
    p.add_argument("run_a", type=Path, help="a run directory (its store)")
    p.add_argument("run_b", type=Path, help="another run over the same parameters (or the same run)")
    p.add_argument("--stream", default="clipped", help="stream of RUN_A (and of RUN_B unless --stream-b) [clipped]")
    p.add_argument("--stream-b", help="stream of RUN_B, e.g. probe1000 [--stream]")
    p.add_argument("--k", type=int, nargs="+", default=[10, 100], help="subspace dimensions [10 100]")
    p.add_argument("--out", type=Path, help="output directory [RUN_A/analysis/STREAM/compare]")
    cli.add_common(p)
    args = p.parse_args(argv)
    cli.use_threads(args)
    res = compare(args.run_a, args.run_b, args.stream, args.stream_b, args.k, args.out,
                  progress=not args.no_progress, device=args.device)  # fmt: skip
    for r in res["angles"]:
        cos = np.asarray(r["cosines"])
        print(
            f"k = {r['k']}: cosines mean {cos.mean():.3f}, min {cos.min():.3f}, > 0.9: {(cos > 0.9).sum()}; "
            f"energy of A in B's top k {r['energy_a_in_b']:.3f} (own {r['energy_a_own']:.3f}), "
            f"of B in A's {r['energy_b_in_a']:.3f} (own {r['energy_b_own']:.3f})"
        )


if __name__ == "__main__":
    main()
