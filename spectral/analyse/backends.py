"""Where a pass's arithmetic runs: small array adaptors for :class:`~spectral.analyse.matrix.TrajectoryMatrix`.

The passes (Gram, Hᵀ U, H V, H Hᵀ Q, norms) are written once, with ``+=``, ``@``, ``.T``, ``.sum``
and ``.mean``, which numpy arrays, torch tensors and dask arrays all understand. An adaptor says
how a block of stored values becomes an array (``widen``), how accumulators start (``zeros``) and
how results come back (``to_host``, ``write``):

``HostOps``   numpy on the host; blocks widened to float64 in sub-blocks (the default).
``TorchOps``  torch on a device: the stored values (float32, or 16-bit) go host → device as they
              are, through pinned buffers, and are widened there; float32 outputs come back as
              float32 through a pinned staging buffer.
``DaskOps``   dask arrays on a cluster: each pass builds one lazy graph over the store's
              ``to_dask`` view (read where it is computed) and ``to_host`` computes it.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpectralError
from ..store.format import from_storage


def make_ops(device=None, client=None):
    """The adaptor for a dask ``client``, else for ``device`` (a ``torch.device`` the stage resolved:
    torch on anything but the CPU), else numpy on the host."""
    if client is not None:
        return DaskOps(client)
    if device is not None:
        import torch

        if torch.device(device).type != "cpu":
            return TorchOps(torch.device(device))
    return HostOps()


class HostOps:
    """numpy on the host."""

    lazy, checkpoints, copies_host_blocks = False, True, False

    def compute_width(self, read_cols: int, compute_cols: int) -> int:
        return compute_cols

    def host_buffer(self, size: int, dtype) -> np.ndarray:
        return np.empty(size, dtype=dtype)

    def widen(self, raw, a, b, rows, n_all, storage, dtype):
        """Columns [a, b) of a stored block as a C-contiguous ``dtype`` array of the selected rows."""
        sub = raw[:, a:b] if len(rows) == n_all else raw[rows, a:b]
        if storage == "bfloat16":
            return from_storage(sub, storage, dtype)
        return np.ascontiguousarray(sub, dtype=dtype)

    def zeros(self, shape):
        return np.zeros(shape)

    def asarray(self, x, dtype=np.float64):
        return np.asarray(x, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def write(self, out, start, stop, value) -> None:
        out[start:stop] = value

    def finish_writes(self, out) -> None:
        pass


class TorchOps(HostOps):
    """torch on ``device``: one device block per read block (the GPU has the memory)."""

    copies_host_blocks = True

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.pin = self.device.type == "cuda"
        self._rows = None
        self._staging = None

    def compute_width(self, read_cols: int, compute_cols: int) -> int:
        return read_cols

    def _dtype(self, dtype):
        return {np.dtype(np.float64): self.torch.float64, np.dtype(np.float32): self.torch.float32}[np.dtype(dtype)]

    def host_buffer(self, size: int, dtype) -> np.ndarray:
        """A pinned host buffer (page-locked: the copy to the device runs at full speed)."""
        dtype = np.dtype(dtype)
        like = {2: self.torch.int16, 4: self.torch.float32}[dtype.itemsize]
        if dtype == np.float16:
            like = self.torch.float16
        return self.torch.empty(size, dtype=like, pin_memory=self.pin).numpy().view(dtype)

    def to_device(self, raw: np.ndarray):
        """The stored values on the device, still in their stored width (a blocking copy: the host
        buffer may be refilled once it returns)."""
        host = raw.view(np.int16) if raw.dtype == np.uint16 else raw
        return self.torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def widen(self, block, a, b, rows, n_all, storage, dtype):
        torch = self.torch
        if isinstance(block, np.ndarray):  # an in-memory source: not read through the buffers
            block = self.to_device(np.ascontiguousarray(block[:, a:b]))
            a, b = 0, block.shape[1]
        sub = block[:, a:b]
        if len(rows) != n_all:
            if self._rows is None or len(self._rows) != len(rows):
                self._rows = torch.as_tensor(rows, device=self.device)
            sub = sub[self._rows]
        if storage == "bfloat16":  # the stored 16 bits are the float32's upper half
            sub = ((sub.to(torch.int32) & 0xFFFF) << 16).view(torch.float32)
        return sub.to(self._dtype(dtype))

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def asarray(self, x, dtype=np.float64):
        return self.torch.as_tensor(np.asarray(x, dtype=dtype), device=self.device)

    def to_host(self, x) -> np.ndarray:
        return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)

    def write(self, out, start, stop, value) -> None:
        """``out[start:stop] = value`` through a pinned staging buffer in ``out``'s dtype."""
        value = value.to(self._dtype(out.dtype))
        size = value.numel()
        if self._staging is None or self._staging.numel() < size or self._staging.dtype != value.dtype:
            self._staging = self.torch.empty(size, dtype=value.dtype, pin_memory=self.pin)
        host = self._staging[:size].view(value.shape)
        host.copy_(value)
        out[start:stop] = host.numpy()


class DaskOps:
    """dask arrays over the store's ``to_dask`` view; ``to_host`` runs a pass's graph on the cluster."""

    lazy, checkpoints, copies_host_blocks = True, False, False

    def __init__(self, client):
        self.client = client
        self._writes: list = []

    def compute_width(self, read_cols: int, compute_cols: int) -> int:
        return compute_cols

    def blocks(self, matrix, start_col: int, dtype):
        """``(start, stop, lazy block)`` per column chunk of the store's dask array."""
        if isinstance(matrix.source, np.ndarray):
            raise SpectralError("the dask backend reads a store; pass the store, not an in-memory array")
        import dask.array as da

        H = da.concatenate([matrix.source.to_dask(s) for s in matrix.streams], axis=0)
        if matrix.n != matrix.n_all:
            H = H[matrix.rows]
        edges = np.cumsum((0, *H.chunks[1]))
        for a, b in zip(edges[:-1], edges[1:]):
            if b > start_col:
                yield int(a), int(b), H[:, a:b].astype(dtype)

    def zeros(self, shape):
        import dask.array as da

        return da.zeros(shape, dtype=np.float64, chunks=shape or -1)

    def asarray(self, x, dtype=np.float64):
        return np.asarray(x, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x.compute() if hasattr(x, "compute") else x)

    def write(self, out, start, stop, value) -> None:
        self._writes.append((value, (slice(start, stop),)))

    def finish_writes(self, out) -> None:
        """Run the pass: into a ``.npy`` memmap the workers write their chunks themselves."""
        import dask
        import dask.array as da

        writes, self._writes = self._writes, []
        path = getattr(out, "path", None) or getattr(out, "filename", None)
        if path is not None:  # a .npy file (NpyRowWriter or a memmap): the workers write their chunks
            from .distributed import NpyChunkWriter

            if isinstance(out, np.memmap):
                out.flush()
            target = NpyChunkWriter(path)
            da.store([v for v, _ in writes], [target] * len(writes), regions=[r for _, r in writes], lock=False)
            return
        for (_, region), value in zip(writes, dask.compute(*[v for v, _ in writes])):
            out[region] = value
