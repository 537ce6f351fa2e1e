"""``python -m spectral.bench collect``: DP step cost and logging overhead on the default model.

Prints a Markdown table: seconds per step and peak memory of a non-private step, a DP step
with per-sample clipping, with ghost clipping, and with ghost clipping plus store writes,
each as a ratio to the non-private step. Needs SST-2 (see --data resolution in the README).
"""

from __future__ import annotations

import argparse
import json

from ..errors import cli_entry


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spectral.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect", help="DP step and logging cost on the embedded default model")
    c.add_argument("--params", nargs="+", default=["attention-qv", "all"], help="parameter sets to measure")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--physical-batch-size", type=int, default=32)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    args = parser.parse_args(argv)

    from . import collect as bench

    if args.worker:
        print(json.dumps(bench.measure(args.worker, args.params[0], args.batch_size, args.physical_batch_size,
                                       args.warmup, args.steps)))
        return
    results = bench.run(args.params, args.batch_size, args.physical_batch_size, args.warmup, args.steps)
    print(bench.table(results))


if __name__ == "__main__":
    main()
