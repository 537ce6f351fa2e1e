"""``python -m spectral.store RUN_DIR [--verify]``: summary of a store, optionally checksummed.

``python -m spectral.store retile RUN_DIR [--tile-cols T]``: rewrite a store's row-major shards
(format version 1) in column tiles (version 2), which analyses read at the disk's sequential rate.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import cli_entry
from . import open as open_store


def retile_main(argv) -> None:
    from .migrate import retile

    parser = argparse.ArgumentParser(prog="python -m spectral.store retile", description=__doc__)
    parser.add_argument("run_dir", help="a store written by python -m spectral.collect")
    parser.add_argument("--tile-cols", type=int, default=None, help="columns per tile [the store's, else 4096]")
    parser.add_argument("--force", action="store_true", help="retile a store marked running (after a crash)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    count = retile(args.run_dir, args.tile_cols, progress=not args.no_progress, force=args.force)
    print(
        f"{args.run_dir}: {count} shard files rewritten in column tiles" if count else f"{args.run_dir}: already tiled"
    )


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["retile"]:
        return retile_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m spectral.store", description=__doc__)
    parser.add_argument("run_dir", help="a store written by python -m spectral.collect")
    parser.add_argument("--verify", action="store_true", help="check every shard's SHA-256 (reads all data)")
    args = parser.parse_args(argv)
    store = open_store(args.run_dir, verify=args.verify)
    m = store.manifest
    print(store)
    layout = f"tiles of {store.tile_cols} columns" if m.get("tile_cols") else "row-major (version 1: retile it)"
    print(f"status: {m['status']}  shards: {len(m['shards'])}  layout: {layout}  checkpoint: {m['checkpoint']}")
    if "model" in m:
        print(f"model: {m['model'].get('name')}  trained: {m.get('config', {}).get('params')}  d={store.d:,}")
    if len(store.steps):
        print(store.steps.tail(3).to_string(index=False))
    if args.verify:
        print("checksums: ok")


if __name__ == "__main__":
    main()
