"""``python -m spectral.bench collect|analyse|dask|retrain|threads``: side-by-side measurements printed as tables.

collect  seconds per step and peak memory of a non-private step, a DP step with per-sample
         clipping, with ghost clipping, and with ghost clipping plus store writes, as ratios to
         the non-private step, on the embedded default model and SST-2; with --nproc N, a
         torchrun job of N ranks against one process.
analyse  our principal components vs sklearn randomized_svd, torch.svd_lowrank, scipy eigsh and
         the seed code's orthogonal iteration on a synthetic on-disk trajectory: time, passes,
         peak RSS, accuracy against an exact reference, and our time against a lower bound.
dask     the analyse stage single-process vs a local dask cluster (same store, same answer).
threads  the default --threads (free cores) against all cores, alone and beside a busy process.
retrain  seconds per DP step restricted to a top-r subspace (each mode) vs unrestricted, taking
         turns on the same batches of the embedded default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import cli_entry


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m spectral.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect", help="DP step and logging cost on the embedded default model")
    c.add_argument("--params", nargs="+", default=["attention-qv", "all"], help="parameter sets to measure")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--physical-batch-size", type=int, default=32)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N [cpu]")
    c.add_argument(
        "--nproc",
        type=int,
        help="instead: a torchrun job of this many ranks vs one process (time per step, agreement of the rows)",
    )
    c.add_argument("--model", help="model to measure [the embedded all-MiniLM-L6-v2]")
    c.add_argument("--data", help="data (as collect's --data) [SST-2]")
    c.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    a = sub.add_parser("analyse", help="principal components: ours vs library methods on a synthetic store")
    a.add_argument("--n", type=int, default=2000, help="steps (rows)")
    a.add_argument(
        "--d",
        type=int,
        nargs="+",
        default=[2_000_000],
        help="parameters (columns); n*d*4 bytes on disk (--cold: several)",
    )
    a.add_argument("--k", type=int, nargs="+", default=[100, 500])
    a.add_argument("--slope", type=float, default=1.0, help="singular values fall as j^-slope")
    a.add_argument("--methods", nargs="+", default=["ours", "orthiter", "sklearn", "torch", "eigsh"])
    a.add_argument("--dir", type=Path, default=Path("runs/bench-analyse"), help="where the synthetic store lives")
    a.add_argument("--timeout", type=int, default=1800, help="seconds allowed per method")
    a.add_argument(
        "--device",
        default="cpu",
        help="also run ours on this device (cuda[:N]) and print its bound (GEMM, host-to-device, disk)",
    )
    a.add_argument(
        "--cold",
        action="store_true",
        help="the analyse stage at a paper-like shape (e.g. --n 4000 --d 250000 500000 --k 1000), page cache "
        "dropped before every pass, against the disk's sequential rate; peak RSS per d",
    )
    a.add_argument("--legacy", metavar="GITREF", help="--cold: also time the code at GITREF (on a row-major copy)")
    a.add_argument("--keep", action="store_true", help="--cold: keep the stores (deleted by default)")
    a.add_argument("--worker", help=argparse.SUPPRESS)
    r = sub.add_parser("retrain", help="cost of subspace-restricted DP steps vs unrestricted")
    r.add_argument("--ranks", type=int, nargs="+", default=[10, 100])
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--warmup", type=int, default=2)
    r.add_argument("--model", help="model to measure [the embedded all-MiniLM-L6-v2]")
    r.add_argument("--data", help="data (as collect's --data) [SST-2]")
    r.add_argument("--batch-size", type=int, help="expected logical batch [collect's default]")
    t = sub.add_parser("threads", help="collect's default --threads vs all cores, alone and beside a busy process")
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--model", help="model to measure [the embedded all-MiniLM-L6-v2]")
    t.add_argument("--data", help="data (as collect's --data) [SST-2]")
    k = sub.add_parser("dask", help="analyse single-process vs a local dask cluster on a synthetic store")
    k.add_argument("--n", type=int, default=1000)
    k.add_argument("--d", type=int, default=200_000)
    k.add_argument("--k", type=int, default=100)
    k.add_argument("--workers", type=int, default=2)
    k.add_argument("--dir", type=Path, default=Path("runs/bench-dask"))
    args = parser.parse_args(argv)

    if args.what == "dask":
        from . import dask as bench_dask

        print(bench_dask.run(args.n, args.d, args.k, args.workers, args.dir))
        return

    if args.what == "threads":
        from . import threads

        print(threads.run(args.steps, model=args.model, data=args.data))
        return

    if args.what == "retrain":
        from . import retrain as bench_retrain

        chosen = {k: v for k, v in (("model", args.model), ("data", args.data), ("batch_size", args.batch_size)) if v}
        print(bench_retrain.run(tuple(args.ranks), steps=args.steps, warmup=args.warmup, **chosen))
        return

    if args.what == "analyse":
        from . import analyse as bench_analyse

        if args.cold:
            from . import paper_shape

            if args.worker:
                paper_shape.worker(args.worker, args.k[0])
            else:
                print(paper_shape.run(args.n, args.d, args.k[0], args.dir, args.legacy, args.keep))
            return
        if args.worker:
            bench_analyse.worker(
                args.worker, str(args.dir / "store"), args.k[0], str(args.dir / f"k{args.k[0]}"), args.device
            )
            return
        print(
            bench_analyse.run(args.n, args.d[0], args.k, args.slope, args.dir, args.methods, args.timeout, args.device)
        )
        return

    if args.nproc:
        from . import parallel

        print(
            parallel.run(
                args.nproc, args.steps, args.batch_size, args.physical_batch_size, args.device, args.model, args.data
            )
        )
        return

    from . import collect as bench

    if args.worker:
        print(
            json.dumps(
                bench.measure(
                    args.worker,
                    args.params[0],
                    args.batch_size,
                    args.physical_batch_size,
                    args.warmup,
                    args.steps,
                    device=args.device,
                    model_name=args.model or "all-MiniLM-L6-v2",
                    data=args.data,
                )
            )
        )
        return
    results = bench.run(
        args.params,
        args.batch_size,
        args.physical_batch_size,
        args.warmup,
        args.steps,
        args.device,
        args.model,
        args.data,
    )
    print(bench.table(results, args.device))


if __name__ == "__main__":
    main()
