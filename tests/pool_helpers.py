"""Helpers for the pool tests: deterministic models, invariants, raw pool surgery."""

from __future__ import annotations

import struct
import zlib
from typing import Sequence

import numpy as np

import pyaccel
from pyaccel.pool import Pool, TensorWrite

MiB = 1 << 20
ONNX_FLOAT, ONNX_INT64 = 1, 7


def model_arrays(name: str, n: int = 3, size: int = 64 << 10, shared: int = 0) -> list[np.ndarray]:
    """The tensors of model ``name``: deterministic from the name.

    The first ``shared`` tensors are the same for every model (so loads of
    different models share them); the rest depend on the name.
    """
    out = []
    for i in range(n):
        seed = i if i < shared else zlib.crc32(f"{name}/{i}".encode())
        rng = np.random.default_rng(seed)
        out.append(rng.standard_normal(size // 4, dtype=np.float32))
    return out


def write_arrays(pool: Pool, name: str, arrays: Sequence[np.ndarray], **kw: object):
    """Load arrays as a model; returns (id, lease)."""
    tensors = [TensorWrite(f"w{i}", ONNX_FLOAT, a.shape, a.nbytes, buffer=a) for i, a in enumerate(arrays)]
    return pool.write_model(name, tensors, meta=f"meta of {name}".encode(), **kw)


def load(pool: Pool, name: str, **kw: object):
    return write_arrays(pool, name, model_arrays(name, **kw))


def read_model(pool: Pool, name: str) -> list[np.ndarray]:
    """Lease ``name`` and view its tensors (the views keep the lease)."""
    rec = pool.model(name)
    lease = pool.lease(rec.id)
    return [pool.array(lease, t.offset, np.float32, t.shape) for t in pool.tensors(rec.id)]


def ready_names(pool: Pool) -> set[str]:
    return {m.name for m in pool.models()}


def check_invariants(pool: Pool) -> None:
    """What must hold after any crash, once fsck has repaired what it may.

    No extents overlap or leave their partition, nothing leaks (a second
    fsck finds nothing and used space is exactly the extents'), no model is
    half loaded, and every committed tensor matches its checksum.
    """
    rep = pool.fsck(repair=True)
    assert rep.bad_records == 0, rep.report
    again = pool.fsck()
    assert again.problems == 0, again.report
    st = pool.status()
    assert st.n_loading == 0
    assert pool.verify() == []
    extents: dict[int, int] = {}
    for m in pool.models(all_versions=True):
        for t in pool.tensors(m.id):
            if t.nbytes:
                extents[t.extent_id] = (t.nbytes + 4095) // 4096 * 4096
    metas = sum((len(f"meta of {m.name}") + 4095) // 4096 * 4096 for m in pool.models(all_versions=True))
    assert st.used == sum(extents.values()) + metas, (st.used, extents)


def corrupt(path: str, offset: int, nbytes: int = 4) -> None:
    """Flip bytes of the pool's backing store at offset (through the file)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = bytearray(f.read(nbytes))
        f.seek(offset)
        f.write(bytes(x ^ 0x5A for x in b))


def catalog_generations(path: str, st: pyaccel.PoolStatus) -> list[int]:
    """The generation numbers in the two catalog copies' headers."""
    gens = []
    with open(path, "rb") as f:
        for slot in range(2):
            f.seek(st.catalog_offset + slot * st.catalog_size + 8)
            gens.append(struct.unpack("<Q", f.read(8))[0])
    return gens
