"""``python -m spectral.store RUN_DIR [--verify]``: summary of a store, optionally checksummed."""

from __future__ import annotations

import argparse

from ..errors import cli_entry
from . import open as open_store


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spectral.store", description=__doc__)
    parser.add_argument("run_dir", help="a store written by python -m spectral.collect")
    parser.add_argument("--verify", action="store_true", help="check every shard's SHA-256 (reads all data)")
    args = parser.parse_args(argv)
    store = open_store(args.run_dir, verify=args.verify)
    m = store.manifest
    print(store)
    print(f"status: {m['status']}  shards: {len(m['shards'])}  checkpoint: {m['checkpoint']}")
    if "model" in m:
        print(f"model: {m['model'].get('name')}  trained: {m.get('config', {}).get('params')}  d={store.d:,}")
    if len(store.steps):
        print(store.steps.tail(3).to_string(index=False))
    if args.verify:
        print("checksums: ok")


if __name__ == "__main__":
    main()
