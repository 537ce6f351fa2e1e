"""The trajectory store against the arrays written into it."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from helpers import write_store

import spectral.store as store
from spectral.errors import SpectralError
from spectral.store import format as fmt
from spectral.store.format import TILE_COLS, from_storage, to_storage
from spectral.store.reader import ShardReader, shard_geometry
from spectral.store.writer import write_tiled

LAYOUT = [
    {"name": "w", "shape": [3, 4], "offset": 0, "numel": 12},
    {"name": "b", "shape": [5], "offset": 12, "numel": 5},
]
D = 17


def write(
    root,
    H,
    dtype="float32",
    shard_rows=3,
    commit_at=(),
    streams=("clipped", "private"),
    close=True,
    tile_cols=TILE_COLS,
):
    w = store.StoreWriter.create(
        root,
        layout=LAYOUT,
        streams=list(streams),
        dtype=dtype,
        shard_rows=shard_rows,
        meta={"config": {"seed": 1}},
        tile_cols=tile_cols,
    )
    for i, row in enumerate(H):
        w.append(i, {s: row * (k + 1) for k, s in enumerate(streams)}, {"loss": float(i)})
        w.log("eval", {"step": i, "accuracy": i / 10})
        if i in commit_at:
            w.commit({"x": np.full(2, i, np.float32)}, {"step_seen": i})
    if close:
        w.commit({"x": np.full(2, len(H), np.float32)}, {"step_seen": len(H)}, status="complete")
        w.close()
    return w


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_roundtrip_rows_columns_blocks(tmp_path, dtype, tol):
    H = np.random.default_rng(0).standard_normal((11, D)).astype(np.float32)
    write(tmp_path / "run", H, dtype=dtype)
    s = store.open(tmp_path / "run", verify=True)
    assert (s.n_steps, s.d, s.streams, s.dtype) == (11, D, ["clipped", "private"], dtype)
    scale = np.abs(H).max()
    np.testing.assert_allclose(s.rows("clipped"), H, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(s.rows("private"), 2 * H, atol=2 * tol * scale, rtol=0)
    np.testing.assert_array_equal(s.columns("clipped", 4, 9), s.rows("clipped")[:, 4:9])
    np.testing.assert_array_equal(s.block("clipped", 2, 7, 3, 16), s.rows("clipped")[2:7, 3:16])
    rows = np.vstack([b for _, b in s.iter_row_blocks("clipped", 4)])
    cols = np.hstack([b for _, b in s.iter_column_blocks("clipped", 5)])
    np.testing.assert_array_equal(rows, s.rows("clipped"))
    np.testing.assert_array_equal(cols, s.rows("clipped"))
    assert [(a, b) for a, b, _ in s.shards("clipped")] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    named = s.unflatten(s.rows("clipped")[5])
    np.testing.assert_array_equal(named["w"], s.rows("clipped")[5, :12].reshape(3, 4))
    assert list(s.steps["step"]) == list(range(11)) and list(s.table("eval")["step"]) == list(range(11))


def test_bfloat16_rounding_matches_torch():
    import torch

    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 1e3
    ours = from_storage(to_storage(x, "bfloat16"), "bfloat16")
    ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours, ref)


def test_commit_is_the_unit_of_durability(tmp_path):
    """Rows appended after the last commit are not part of the store; resume drops orphans."""
    H = np.random.default_rng(2).standard_normal((10, D)).astype(np.float32)
    w = write(tmp_path / "run", H, shard_rows=2, commit_at=(4,), close=False)
    w.close()  # no final commit: steps 5..9 were written as shards but never committed
    s = store.open(tmp_path / "run")
    assert s.n_steps == 5 and len(s.steps) == 5 and len(s.table("eval")) == 5
    np.testing.assert_array_equal(s.rows("clipped"), H[:5])
    orphans = sorted(p.name for p in (tmp_path / "run/streams/clipped").iterdir())
    assert len(orphans) > 3  # shards beyond the commit exist on disk ...
    w2, ckpt = store.StoreWriter.resume(tmp_path / "run")
    assert ckpt.step == 5 and ckpt.meta == {"step_seen": 4} and ckpt.tensors["x"][0] == 4
    assert w2.n_steps == 5
    for i in range(5, 10):
        w2.append(i, {"clipped": H[i], "private": 2 * H[i]}, {"loss": float(i)})
    w2.commit({"x": np.zeros(2, np.float32)}, {}, status="complete")
    w2.close()
    s = store.open(tmp_path / "run", verify=True)
    assert s.n_steps == 10 and list(s.steps["step"]) == list(range(10))  # every step exactly once
    np.testing.assert_array_equal(s.rows("clipped"), H)
    assert len(list((tmp_path / "run/checkpoint").iterdir())) == 2  # one checkpoint (.safetensors + .json)


def test_a_run_that_has_just_started_reads_as_empty(tmp_path):
    """A store opened before its first commit (a run in progress) has empty tables, not an error."""
    w = write(tmp_path / "run", np.zeros((0, D), np.float32), close=False)
    s = store.open(tmp_path / "run")
    assert s.n_steps == 0 and len(s.steps) == 0
    with pytest.raises(SpectralError, match="no table 'eval'"):  # not logged yet
        s.table("eval")
    w.close()


def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path):
    """Reading the trained state (init-from) and resuming share one checkpoint reader."""
    write(tmp_path / "run", np.ones((4, D), np.float32))
    assert store.open(tmp_path / "run").checkpoint.meta == {"step_seen": 4}
    next((tmp_path / "run/checkpoint").glob("*.safetensors")).write_bytes(b"not safetensors")
    with pytest.raises(SpectralError, match="checkpoint .* is unreadable"):
        store.open(tmp_path / "run").checkpoint
    with pytest.raises(SpectralError, match="checkpoint .* is unreadable"):
        store.StoreWriter.resume(tmp_path / "run")


def test_truncated_shard_is_detected(tmp_path):
    write(tmp_path / "run", np.ones((6, D), np.float32))
    shard = sorted((tmp_path / "run/streams/clipped").iterdir())[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(SpectralError, match="truncated or corrupt|holds"):
        store.open(tmp_path / "run")


def test_corrupted_shard_is_detected_by_checksum(cli, tmp_path):
    write(tmp_path / "run", np.ones((6, D), np.float32))
    shard = sorted((tmp_path / "run/streams/private").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    store.open(tmp_path / "run")  # header and size are intact
    with pytest.raises(SpectralError, match="checksum"):
        store.open(tmp_path / "run", verify=True)
    result = cli("spectral.store", tmp_path / "run", "--verify")
    assert result.returncode == 2 and result.stderr.strip().startswith("error:") and "checksum" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_stores_give_one_clear_error(cli, tmp_path):
    with pytest.raises(SpectralError, match="no such store"):
        store.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpectralError, match="not a spectral store"):
        store.open(tmp_path / "empty")
    write(tmp_path / "run", np.ones((4, D), np.float32))
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    (tmp_path / "run/manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(SpectralError, match="format version 99"):
        store.open(tmp_path / "run")
    (tmp_path / "run/manifest.json").write_text("{not json")
    with pytest.raises(SpectralError, match="corrupt"):
        store.open(tmp_path / "run")
    (tmp_path / "run/manifest.json").write_text(json.dumps(manifest))
    s = store.open(tmp_path / "run")
    with pytest.raises(SpectralError, match="unknown stream"):
        s.rows("noised")
    with pytest.raises(SpectralError, match="outside"):
        s.block("clipped", 0, 99)
    result = cli("spectral.store", tmp_path / "nothing")
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("tile_cols,tiled", [(5, True), (D, False), (TILE_COLS, False)])
def test_the_writer_tiles_a_shard_only_when_a_tile_is_narrower_than_a_row(tmp_path, tile_cols, tiled):
    # a tile as wide as a row is row-major already: rewriting the shard would copy it for nothing
    H = np.random.default_rng(7).standard_normal((8, D)).astype(np.float32)
    write(tmp_path / "run", H, tile_cols=tile_cols)
    s = store.open(tmp_path / "run", verify=True)
    assert [arr.ndim for _, _, arr in s.shards("clipped")] == [1 if tiled else 2] * 3
    assert [t for _, _, t in s.shard_tiles("clipped")] == [min(tile_cols, D)] * 3
    np.testing.assert_array_equal(s.rows("clipped"), H)
    np.testing.assert_array_equal(s.block("clipped", 1, 7, 4, 13), H[1:7, 4:13])


def test_a_block_defaults_to_the_whole_stream_and_refuses_what_lies_outside(tmp_path):
    H = np.random.default_rng(8).standard_normal((11, D)).astype(np.float32)
    write(tmp_path / "run", H)
    s = store.open(tmp_path / "run")
    np.testing.assert_array_equal(s.block("clipped"), H)
    assert s.block("clipped", 2, 7, 5, 5).shape == (5, 0) and s.block("clipped", 4, 4).shape == (0, D)
    for outside in [(0, 12), (0, 11, 0, D + 1), (3, 2), (0, 11, 6, 5)]:
        with pytest.raises(SpectralError, match=r"^block rows \[.*\) cols \[.*\) is outside \(11, 17\)$"):
            s.block("clipped", *outside)


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_shard_reader_slices_as_numpy_does(tmp_path, stored, dtype):
    # the array-like dask reads chunks through: any contiguous block, in the dtype asked for
    s = write_store(tmp_path / "s", np.random.default_rng(9).standard_normal((14, 900)), dtype=stored)
    _, _, arr = s.shards("clipped")[0]  # 7 rows in tiles of 512 and 388 columns
    reader = ShardReader(arr.filename, arr.offset, (7, 900), shard_geometry(arr, 900, s.tile_cols)[1], stored, dtype)
    assert (reader.shape, reader.ndim, reader.dtype) == ((7, 900), 2, np.dtype(dtype))
    want = s.rows("clipped", 0, 7, np.float64)
    for key in [slice(2, 5), (slice(None), slice(300, 700)), (slice(3, 7), slice(500, 900)), slice(3, 3),
                (slice(None), slice(9, 9))]:  # fmt: skip
        got = reader[key]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want[key])
    with pytest.raises(IndexError, match="^a ShardReader reads contiguous blocks only$"):
        reader[::2, :]


def test_a_block_fills_only_a_c_contiguous_out_of_its_shape_and_dtype(tmp_path):
    H = np.random.default_rng(10).standard_normal((11, D)).astype(np.float32)
    write(tmp_path / "run", H)
    s = store.open(tmp_path / "run")
    out = np.empty((5, 3), np.float32)
    assert s.block("clipped", 2, 7, 4, 7, out=out) is out
    np.testing.assert_array_equal(out, H[2:7, 4:7])
    for wrong in [np.empty((5, 4), np.float32), np.empty((5, 3), np.float64), np.empty((3, 5), np.float32).T]:
        with pytest.raises(ValueError, match=r"^out must be a C-contiguous float32 array of shape \(5, 3\)$"):
            s.block("clipped", 2, 7, 4, 7, out=wrong)


def test_a_shard_cut_short_after_opening_names_itself(tmp_path):
    write(tmp_path / "run", np.ones((6, D), np.float32))
    s = store.open(tmp_path / "run")
    shard = sorted((tmp_path / "run/streams/clipped").iterdir())[1]
    shard.write_bytes(shard.read_bytes()[:-10])  # e.g. a shared file system that lost a write
    with pytest.raises(SpectralError, match=f"^{shard}: file ended early \\(truncated shard\\)$"):
        s.block("clipped")


def test_short_reads_continue_where_they_stopped(tmp_path, monkeypatch):
    data = bytes(range(64))
    (tmp_path / "f").write_bytes(data)
    real, sizes = os.preadv, itertools.cycle([1, 3, 7, 2, 11])

    def short(fd, views, pos):  # a read that stops early, as preadv may
        n, cut = next(sizes), []
        for v in views:
            if n > 0:
                cut.append(v[:n])
                n -= len(cut[-1])
        return real(fd, cut, pos)

    monkeypatch.setattr(fmt.os, "preadv", short)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        out = bytearray(40)
        fmt._preadv_all(fd, [memoryview(out)[a:b] for a, b in [(0, 10), (10, 13), (13, 14), (14, 40)]], 5)
        assert bytes(out) == data[5:45]
        with pytest.raises(OSError, match=r"^file ended early \(truncated shard\)$"):
            fmt._preadv_all(fd, [memoryview(bytearray(10))], 60)
    finally:
        os.close(fd)


def test_adjacent_runs_are_read_in_batches_the_kernel_accepts(tmp_path, monkeypatch):
    values = np.arange(3000, dtype=np.float32)
    (tmp_path / "f").write_bytes(b"head" + values.tobytes())
    calls = []
    real = os.preadv
    monkeypatch.setattr(fmt.os, "preadv", lambda fd, views, pos: calls.append(len(views)) or real(fd, views, pos))
    out = np.empty((3000, 1), np.float32)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:  # 3000 one-element runs, adjacent in the file: one preadv per IOV_MAX of them
        fmt.read_runs(fd, 4, ((i, i, 0, 1) for i in range(3000)), out)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(out[:, 0], values)
    assert max(calls) <= fmt.IOV_MAX and len(calls) == -(-3000 // fmt.IOV_MAX)


def test_a_shard_is_tiled_in_reads_of_the_chunk_size_and_a_failed_read_leaves_no_file(tmp_path):
    rows = np.random.default_rng(11).standard_normal((6, 50)).astype(np.float32)
    asked = []

    def read(c0, c1):
        asked.append((c0, c1))
        return rows[:, c0:c1]

    one = write_tiled(tmp_path / "one.npy", 6, 50, np.float32, 8, read)  # the whole shard in one read
    assert asked == [(0, 50)]
    asked.clear()
    chunked = write_tiled(tmp_path / "chunked.npy", 6, 50, np.float32, 8, read, chunk_bytes=2 * 6 * 4 * 8)
    assert asked == [(0, 16), (16, 32), (32, 48), (48, 50)]  # two tiles per read, the last read short
    assert chunked == one and (tmp_path / "chunked.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()
    tiled = np.load(tmp_path / "one.npy")
    np.testing.assert_array_equal(tiled[: 6 * 8].reshape(6, 8), rows[:, :8])  # tile 1: every row's first 8
    np.testing.assert_array_equal(tiled[6 * 48 :].reshape(6, 2), rows[:, 48:])  # the last tile, 2 wide

    def failing(c0, c1):
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="the disk went away"):
        write_tiled(tmp_path / "failed.npy", 6, 50, np.float32, 8, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.npy", "one.npy"]


def test_writer_rejects_wrong_row_length(tmp_path):
    w = store.StoreWriter.create(
        tmp_path / "run", layout=LAYOUT, streams=["clipped"], dtype="float32", shard_rows=2, meta={}
    )
    w.append(0, {"clipped": np.ones(D + 1, np.float32)}, {})
    with pytest.raises(SpectralError, match="d=17"):
        w.close()


def test_resume_removes_a_half_written_shard(tmp_path):
    H = np.random.default_rng(6).standard_normal((5, D)).astype(np.float32)
    w = write(tmp_path / "run", H[:3], shard_rows=4, commit_at=(), close=False)
    w.commit({"x": np.zeros(2, np.float32)}, {})
    w.append(3, {"clipped": H[3], "private": 2 * H[3]}, {"loss": 3.0})  # opens a new shard file
    w.close()  # no commit: as if killed mid-shard
    leftovers = [p.name for p in (tmp_path / "run/streams/clipped").iterdir()]
    assert any(name.endswith(".tmp") for name in leftovers)
    store.StoreWriter.resume(tmp_path / "run")[0].close()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run/streams").glob("*/*"))
    assert store.open(tmp_path / "run", verify=True).n_steps == 3


def test_cli_output_into_a_closed_pipe_is_quiet(spawning, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    write(tmp_path / "run", np.ones((30, D), np.float32))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spectral.store", str(tmp_path / "run")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader went away, as `| head -0` does
    stderr = proc.stderr.read().decode()
    proc.wait()
    assert "Traceback" not in stderr
