"""pyaccel.load_model end to end through a real pool (issue 4: Correctness and bad input).

Every test here loads through :func:`pyaccel.load_model` into a real pool
(tmpfs always; hugetlbfs and a loop device as root) and checks what a user
gets: outputs bit-identical to onnxruntime loading the original file with the
same options, weights that are read-only views of the pool, attach without
reading the file in other processes, one copy when processes race, coherence
when the source changes, bad input that leaves the pool as it was, Ctrl-C,
``verify``, leases and the progress bar.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models as om
import pyaccel
from conftest import python_env, run_python
from pyaccel import onnxfile
from pyaccel import pool as pool_mod
from pyaccel.errors import (
    ExternalDataError,
    MalformedModelError,
    ModelError,
    ModelInUseError,
    PoolCorruptError,
    PoolFullError,
    PyaccelError,
)
from pyaccel.onnxfile import StaleSourceError
from pyaccel.ortsession import session_binding

CPU = ["CPUExecutionProvider"]
MiB = 1 << 20
TESTS = str(Path(__file__).resolve().parent)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _opts(prepack: bool = False) -> ort.SessionOptions:
    """Fresh options (make_session modifies the ones it gets), prepacking as asked."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    return so


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical (NaN-safe: compares bytes), with the same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return list(a.reshape(-1)) == list(b.reshape(-1))
    return a.tobytes() == b.tobytes()


def _reference(path: str, feeds: dict, prepack: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """onnxruntime loading the original file with the same options."""
    sess = ort.InferenceSession(path, _opts(prepack), providers=CPU)
    return [o.name for o in sess.get_outputs()], sess.run(None, feeds)


def _check_outputs(model: pyaccel.Model, path: str, feeds: dict, prepack: bool = False) -> ort.InferenceSession:
    """model.session() with the same options as onnxruntime on the file: every output bit-identical."""
    names, ref = _reference(path, feeds, prepack)
    sess = model.session(_opts(prepack), providers=CPU, prepack=prepack)
    assert [o.name for o in sess.get_outputs()] == names
    out = sess.run(None, feeds)
    bad = [n for n, o, r in zip(names, out, ref) if not _same(o, r)]
    assert not bad, f"outputs {bad} differ from onnxruntime on {path} (prepack={prepack})"
    return sess


def _pool_range(pool: pyaccel.Pool) -> tuple[int, int]:
    """[start, end) address of the pool mapping in this process."""
    mv = pool.buffer()
    try:
        a = np.frombuffer(mv, np.uint8)
        lo = a.ctypes.data
        hi = lo + a.nbytes
        del a
    finally:
        mv.release()
    return lo, hi


def _check_zero_copy(model: pyaccel.Model, pool: pyaccel.Pool) -> None:
    """Every weight is a read-only array whose bytes lie inside the pool mapping."""
    lo, hi = _pool_range(pool)
    assert len(model.weights) == model.info.n_tensors
    for name, a in model.weights.items():
        assert isinstance(a, np.ndarray)
        assert not a.flags.writeable, name
        with pytest.raises(ValueError):
            a.reshape(-1)[:1] = 0
        addr = a.ctypes.data
        assert lo <= addr and addr + a.nbytes <= hi, f"{name} at {addr:#x} is not inside the pool [{lo:#x}, {hi:#x})"


def _check_session_zero_copy(sess: ort.InferenceSession, model: pyaccel.Model, file_backed_pool: bool) -> None:
    """The session's OrtValues are the pool arrays; on a file-backed pool no weight was copied."""
    b = session_binding(sess)
    for name, ov in b.ortvalues.items():
        assert ov.data_ptr() == model.weights[name].ctypes.data, name
    if file_backed_pool:
        assert b.copied == (), f"copied into the graph: {b.copied}"
        assert set(b.file_backed) == set(b.ortvalues)
        assert {p for p, _ in b.file_backed.values()} == {os.path.realpath(model.info.pool)}


def _snapshot(pool: pyaccel.Pool) -> dict:
    """What 'the pool as it was' means: generation, usage, the models and their versions."""
    pool.refresh()
    st = pool.status()
    return {
        "generation": st.generation,
        "used": st.used,
        "n_models": st.n_models,
        "n_loading": st.n_loading,
        "n_tensors": st.n_tensors,
        "models": [(m.id, m.name, m.state, m.superseded) for m in pool.models(all_versions=True)],
    }


def _unchanged_except_generation(before: dict, after: dict) -> None:
    """A load that reached the pool and was aborted: the catalog moved (load begun, then dropped), nothing else."""
    assert {k: v for k, v in after.items() if k != "generation"} == {k: v for k, v in before.items() if k != "generation"}


def _new_pool(d: Path | str, size: int = 64 * MiB, name: str = "p.pool") -> pyaccel.Pool:
    return pyaccel.open_pool(os.path.join(str(d), name), create=True, size=size)


def _write_float_ext(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())


@pytest.fixture
def shm_pool(shm_dir: Path) -> Iterator[pyaccel.Pool]:
    """A fresh 64 MiB pool on tmpfs."""
    pool = _new_pool(shm_dir)
    try:
        yield pool
    finally:
        gc.collect()
        pool.close()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The correctness models, written once for the module (tests that change a source make their own)."""
    d = tmp_path_factory.mktemp("loader-models")
    return d


_generated: dict[str, om.Generated] = {}


def _gen(models_dir: Path, name: str) -> om.Generated:
    key = f"{models_dir}/{name}"
    if key not in _generated:
        _generated[key] = om.CORRECTNESS_MODELS[name](str(models_dir / name))
    return _generated[key]


# ---------------------------------------------------------------------------
# 1. Bit-identical outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(om.CORRECTNESS_MODELS))
def test_bit_identical(models_dir, shm_pool, name):
    gen = _gen(models_dir, name)
    before = shm_pool.status()
    model = pyaccel.load_model(gen.path, shm_pool, progress=False)
    assert model.info.streamed
    assert model.info.source == os.path.realpath(gen.path) and model.info.name == os.path.realpath(gen.path)
    assert model.info.pool == shm_pool.path
    scanned = onnxfile.scan(gen.path)
    pooled = [t for t in scanned.tensors if t.dtype != TensorProto.STRING]
    assert model.info.n_tensors == len(pooled) == len(model.weights)
    assert model.info.nbytes == sum(t.nbytes for t in pooled)
    # every weight in the pool is the final array the file describes, bit for bit
    for t in pooled:
        assert _same(model.weights[t.name], np.ascontiguousarray(om.array_of(t))), t.name
    assert shm_pool.status().n_models == before.n_models + 1
    _check_zero_copy(model, shm_pool)
    sess = _check_outputs(model, gen.path, gen.feeds)
    _check_session_zero_copy(sess, model, file_backed_pool=True)
    # the graph kept beside the weights holds no weight bytes
    assert len(model.graph_bytes) < len(scanned.graph_bytes) + 1024
    assert isinstance(model.graph, onnx.ModelProto)
    # a second load in this process attaches to the same copy and gives the same outputs
    again = pyaccel.load_model(gen.path, shm_pool, progress=False)
    assert not again.info.streamed and again.info.model_id == model.info.model_id
    _check_outputs(again, gen.path, gen.feeds)
    assert [o.tobytes() for o in again.run(None, gen.feeds) if o.dtype != object] == \
        [o.tobytes() for o in sess.run(None, gen.feeds) if o.dtype != object]


@pytest.mark.parametrize("name", ["embedded", "external_one_file", "external_many_files", "conv_bn", "subgraphs", "dtypes"])
def test_bit_identical_prepacked(models_dir, shm_pool, name):
    gen = _gen(models_dir, name)
    model = pyaccel.load_model(gen.path, shm_pool, progress=False)
    _check_outputs(model, gen.path, gen.feeds, prepack=True)
    _check_outputs(model, gen.path, gen.feeds, prepack=False)


def test_subgraph_branches_and_trip_counts(models_dir, shm_pool):
    """Both If branches and several Loop trip counts read their weights from the pool."""
    gen = _gen(models_dir, "subgraphs")
    model = pyaccel.load_model(gen.path, shm_pool, progress=False)
    for flag in (True, False):
        for trip in (0, 2):
            feeds = dict(gen.feeds, flag=np.array(flag), notflag=np.array(not flag), trip=np.array(trip, np.int64))
            _check_outputs(model, gen.path, feeds)


def test_torch_export(tmp_path, shm_pool):
    pytest.importorskip("torch", reason="torch is not installed (pip install torch, the CPU wheel)")
    gen = om.make_torch_exported(str(tmp_path))
    model = pyaccel.load_model(gen.path, shm_pool, progress=False)
    assert model.info.nbytes > 16 * 8 * 8 * 64 * 4
    _check_zero_copy(model, shm_pool)
    sess = _check_outputs(model, gen.path, gen.feeds)
    _check_session_zero_copy(sess, model, file_backed_pool=True)
    _check_outputs(model, gen.path, gen.feeds, prepack=True)


def _backend_params() -> list:
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    return [pytest.param(p, id=os.path.dirname(os.path.relpath(p, root))) for p in om.backend_models()]


@pytest.fixture(scope="module")
def backend_pool() -> Iterator[pyaccel.Pool]:
    d = tempfile.mkdtemp(prefix="pyaccel-test-", dir="/dev/shm")
    pool = _new_pool(d, 64 * MiB)
    try:
        yield pool
    finally:
        gc.collect()
        pool.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("path", _backend_params())
def test_onnx_backend_model(backend_pool, path):
    """onnx's own backend test models that carry weights, through the pool."""
    feeds = om.backend_feeds(path)
    if feeds is None:
        pytest.skip("no test_data_set_0 inputs")
    try:
        _reference(path, feeds)
    except Exception as e:  # onnxruntime's own limits (kernels it no longer has ...)
        pytest.skip(f"onnxruntime cannot run this model from the file: {str(e).splitlines()[0][:160]}")
    model = pyaccel.load_model(path, backend_pool, progress=False)
    _check_zero_copy(model, backend_pool)
    _check_outputs(model, path, feeds)


# The core subset on every backend, attached again from a second process.

_CHILD_ATTACH_ALL = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import numpy as np, onnxruntime as ort, pyaccel
    from pyaccel.ortsession import session_binding
    pool = pyaccel.open_pool(sys.argv[1])
    report = {{}}
    for path, feeds_file in json.loads(sys.argv[2]):
        feeds = dict(np.load(feeds_file))
        m = pyaccel.load_model(path, pool, progress=False)
        so = ort.SessionOptions(); so.add_session_config_entry("session.disable_prepacking", "1")
        so.intra_op_num_threads = 1
        ref = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, feeds)
        so = ort.SessionOptions(); so.add_session_config_entry("session.disable_prepacking", "1")
        so.intra_op_num_threads = 1
        out = m.session(so, providers=["CPUExecutionProvider"]).run(None, feeds)
        same = all((list(a.flat) == list(b.flat)) if a.dtype == object else a.tobytes() == b.tobytes()
                   for a, b in zip(out, ref))
        report[path] = {{"streamed": m.info.streamed, "same": same, "id": m.info.model_id}}
    print(json.dumps(report))
    """
)


def _save_feeds(gen: om.Generated, d: Path, name: str) -> str:
    p = str(d / f"{name}.feeds.npz")
    np.savez(p, **gen.feeds)
    return p


def test_every_backend(pool_path, tmp_path):
    """The correctness models on tmpfs, hugetlbfs (root) and a loop device (root), then attached from another process."""
    size = 0 if pool_path.startswith("/dev/") else 64 * MiB
    names = ["embedded", "external_one_file", "external_many_files", "constants", "subgraphs", "dtypes",
             "sparse", "ir3", "conv_bn", "function"]
    gens = {n: om.CORRECTNESS_MODELS[n](str(tmp_path / n)) for n in names}
    ids = {}
    with pyaccel.open_pool(pool_path, create=True, size=size) as pool:
        kind = pool.status().kind
        # ortsession can point onnxruntime at the pool's file only when a regular file backs it
        file_backed = kind in ("tmpfs", "hugetlbfs", "file", "fsdax")
        for n, gen in gens.items():
            model = pyaccel.load_model(gen.path, pool, progress=False)
            assert model.info.streamed, n
            ids[gen.path] = model.info.model_id
            _check_zero_copy(model, pool)
            if kind == "hugetlbfs":
                big = [t for t in pool.tensors(model.info.model_id) if t.nbytes >= 2 * MiB]
                assert all(t.offset % (2 * MiB) == 0 for t in big)
            sess = _check_outputs(model, gen.path, gen.feeds)
            _check_session_zero_copy(sess, model, file_backed)
            if n in ("embedded", "conv_bn", "subgraphs"):
                _check_outputs(model, gen.path, gen.feeds, prepack=True)
            del sess, model
        gc.collect()
        assert pool.verify() == []
        assert pool.fsck().problems == 0
    arg = json.dumps([(g.path, _save_feeds(g, tmp_path, n)) for n, g in gens.items()])
    report = json.loads(run_python(_CHILD_ATTACH_ALL.format(tests=TESTS), pool_path, arg, timeout=300).stdout)
    for path, r in report.items():
        assert r == {"streamed": False, "same": True, "id": ids[path]}, (path, r)


# ---------------------------------------------------------------------------
# 1b. A model over 2 GiB (external data), on tmpfs
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_model_over_2gib_external():
    """2.25 GiB of external data (offsets past 2**31) streamed into a tmpfs pool, then attached elsewhere."""
    d = tempfile.mkdtemp(prefix="pyaccel-test-2g-", dir="/dev/shm")
    try:
        tables = [om.StreamedTensor("E0", (327680, 1024), 1), om.StreamedTensor("E1", (262144, 1024), 2),
                  om.StreamedTensor("E2", (1024, 64), 3)]
        gen = om.make_gather_model(os.path.join(d, "big.onnx"), tables, external="big.weights")
        total = sum(t.nbytes for t in tables)
        assert total > 2**31 and os.path.getsize(gen.files[1]) > 2**31 + 2**28
        with _new_pool(d, total + 64 * MiB) as pool:
            model = pyaccel.load_model(gen.path, pool, progress=False)
            assert model.info.streamed and model.info.nbytes == total
            stream_s = model.info.seconds
            _check_zero_copy(model, pool)
            for k, t in enumerate(tables):
                rows = gen.feeds[f"idx{k}"]
                assert np.array_equal(model.weights[t.name][rows], t.rows(rows)), t.name
            sess = _check_outputs(model, gen.path, gen.feeds)
            _check_session_zero_copy(sess, model, file_backed_pool=True)
            del sess, model
            gc.collect()
        code = textwrap.dedent(
            """
            import sys, json, pyaccel
            m = pyaccel.load_model(sys.argv[2], sys.argv[1], progress=False)
            print(json.dumps({"streamed": m.info.streamed, "s": m.info.seconds, "n": m.info.nbytes}))
            """
        )
        r = json.loads(run_python(code, os.path.join(d, "p.pool"), gen.path).stdout)
        assert r["streamed"] is False and r["n"] == total
        print(f"\n2.25 GiB: streamed in {stream_s:.2f} s, attached in another process in {r['s'] * 1e3:.1f} ms")
    finally:
        gc.collect()
        shutil.rmtree(d, ignore_errors=True)
