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
            if not file_backed:
                # no file behind the pool: onnxruntime's optimizers read the (unchanged) source
                # ranges instead; only tensors converted when streamed have none, and are copied
                converted = {t.name for t in onnxfile.scan(gen.path).tensors if t.range is None}
                assert set(session_binding(sess).copied) <= converted, (n, session_binding(sess).copied)
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


# ---------------------------------------------------------------------------
# 3. Attach in other processes: no reading of the file; racing loaders
# ---------------------------------------------------------------------------

_CHILD_LOAD_RCHAR = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, onnx, onnx.helper, pyaccel
    import pyaccel.loader, pyaccel.pool, pyaccel.onnxfile  # every import done before measuring

    def rchar():
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])

    pool = pyaccel.open_pool(sys.argv[1])
    pool.status()
    r0 = rchar()
    m = pyaccel.load_model(sys.argv[2], pool, progress=False)
    r1 = rchar()
    w = m.weights[sys.argv[3]]
    print(json.dumps({"streamed": m.info.streamed, "seconds": m.info.seconds, "read": r1 - r0,
                      "nbytes": m.info.nbytes, "crc": int(np.frombuffer(w, np.uint8).sum(dtype=np.uint64))}))
    """
)


@pytest.mark.parametrize("layout", ["external", "embedded"])
def test_attach_in_another_process_reads_nothing(shm_dir, layout):
    """The first process streams (reading the whole file); the next one attaches reading (almost) nothing."""
    gen = om.make_matmul_chain(str(shm_dir / "chain.onnx"), 4, 1024, external="chain.w" if layout == "external" else None)
    pool_file = str(shm_dir / "p.pool")
    _new_pool(shm_dir).close()
    first = json.loads(run_python(_CHILD_LOAD_RCHAR, pool_file, gen.path, "W3").stdout)
    second = json.loads(run_python(_CHILD_LOAD_RCHAR, pool_file, gen.path, "W3").stdout)
    model_bytes = 4 * 1024 * 1024 * 4
    assert first["streamed"] is True and first["nbytes"] == model_bytes
    assert first["read"] >= model_bytes  # rchar does count the streaming reads
    assert second["streamed"] is False and second["nbytes"] == model_bytes
    assert second["read"] < min(64 * 1024, model_bytes // 100), second
    assert second["crc"] == first["crc"]
    print(f"\n{layout} 16 MiB: streamed in {first['seconds'] * 1e3:.1f} ms reading {first['read']} B; "
          f"attached in {second['seconds'] * 1e3:.2f} ms reading {second['read']} B")


_CHILD_RACE = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    import numpy as np, onnxruntime, pyaccel, pyaccel.loader, pyaccel.ortsession
    pool = pyaccel.open_pool(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.001)
    m = pyaccel.load_model(sys.argv[2], pool, progress=False)
    x = np.full((2, 1024), 0.01, np.float32)
    so = onnxruntime.SessionOptions(); so.intra_op_num_threads = 1
    out = m.session(so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    weights = hashlib.sha256(b"".join(m.weights[k].tobytes() for k in sorted(m.weights))).hexdigest()
    print(json.dumps({"streamed": m.info.streamed, "seconds": m.info.seconds, "id": m.info.model_id,
                      "out": hashlib.sha256(out.tobytes()).hexdigest(), "weights": weights}), flush=True)
    """
)


def test_racing_loaders_stream_once(shm_dir):
    """4 processes load the same new model at once: one streams, three attach, one copy in the pool."""
    gen = om.make_matmul_chain(str(shm_dir / "race.onnx"), 8, 1024, external="race.w")  # 32 MiB
    pool_file = str(shm_dir / "p.pool")
    _new_pool(shm_dir, 192 * MiB).close()
    go = str(shm_dir / "go")
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD_RACE, pool_file, gen.path, go], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=python_env()) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        Path(go).touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert sorted(r["streamed"] for r in results) == [False, False, False, True], results
    assert len({r["id"] for r in results}) == 1
    assert len({r["weights"] for r in results}) == 1 and len({r["out"] for r in results}) == 1
    names, ref = _reference(gen.path, {"X": np.full((2, 1024), 0.01, np.float32)})
    assert results[0]["out"] == hashlib.sha256(ref[0].tobytes()).hexdigest()
    with pyaccel.open_pool(pool_file) as pool:
        versions = pool.models(all_versions=True)
        assert [(m.name, m.state) for m in versions] == [(os.path.realpath(gen.path), "ready")]
        assert pool.status().used < 2 * 32 * MiB
        assert pool.fsck().problems == 0
    print("\nrace: " + ", ".join(f"{'streamed' if r['streamed'] else 'attached'} {r['seconds'] * 1e3:.0f} ms"
                                 for r in results))


# ---------------------------------------------------------------------------
# 4. Coherence: a changed source is streamed again, held arrays keep their bytes
# ---------------------------------------------------------------------------


def _ext_model(d: Path, w: np.ndarray, name: str = "m.onnx", location: str = "w.bin") -> str:
    """Y = X @ W with W (float32, 2-D) in an external file."""
    d.mkdir(parents=True, exist_ok=True)
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(w.shape))
    om._set_external(t, location, 0, w.nbytes)
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, w.shape[0]])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    _write_float_ext(str(d / location), w)
    path = str(d / name)
    onnx.save(m, path)
    return path


def _w(seed: int, shape=(256, 128)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _x(n: int = 256) -> dict:
    return {"X": np.linspace(-1, 1, 2 * n, dtype=np.float32).reshape(2, n)}


def _rewrite_in_place(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("change", ["rewrite_weight", "touch_mtime", "replace_external_file", "rewrite_embedded_weight"])
def test_changed_source_streams_a_new_version(shm_dir, shm_pool, change):
    old_w, new_w = _w(1), _w(2)
    if change == "rewrite_embedded_weight":
        path = str(shm_dir / "emb.onnx")
        g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 256])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(old_w, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, path)
        data_file = path
        offset = onnxfile.scan(path).tensor("W").range.offset
    else:
        path = _ext_model(shm_dir / "m", old_w)
        data_file = str(shm_dir / "m" / "w.bin")
        offset = 0
    first = pyaccel.load_model(path, shm_pool, progress=False)
    assert first.info.streamed
    held = first.weights["W"]
    sess_old = first.session(_opts(), providers=CPU)
    y_old = sess_old.run(None, _x())[0]
    assert np.array_equal(held, old_w)

    if change == "touch_mtime":
        st = os.stat(data_file)
        os.utime(data_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        want = old_w
    elif change == "replace_external_file":
        tmp = str(shm_dir / "m" / "w.bin.new")
        _write_float_ext(tmp, new_w)
        os.replace(tmp, data_file)
        want = new_w
    else:  # same size, same inode, rewritten in place
        size = os.path.getsize(data_file)
        _rewrite_in_place(data_file, offset, new_w.tobytes())
        assert os.path.getsize(data_file) == size
        want = new_w

    second = pyaccel.load_model(path, shm_pool, progress=False)
    assert second.info.streamed, "a changed source must be streamed again"
    assert second.info.model_id != first.info.model_id
    assert np.array_equal(second.weights["W"], want)
    _check_outputs(second, path, _x())
    # the old version is still there for its holders, with its old bytes
    assert np.array_equal(held, old_w)
    assert _same(sess_old.run(None, _x())[0], y_old)
    versions = {m.id: m for m in shm_pool.models(all_versions=True)}
    assert versions[first.info.model_id].superseded and not versions[second.info.model_id].superseded
    assert shm_pool.model(os.path.realpath(path)).id == second.info.model_id
    # another process gets the new version, without streaming it again
    code = textwrap.dedent(
        """
        import sys, json, numpy as np, pyaccel
        m = pyaccel.load_model(sys.argv[2], sys.argv[1], progress=False)
        print(json.dumps({"streamed": m.info.streamed, "id": m.info.model_id, "w": m.weights["W"].tobytes().hex()}))
        """
    )
    r = json.loads(run_python(code, shm_pool.path, path).stdout)
    assert r["streamed"] is False and r["id"] == second.info.model_id
    assert bytes.fromhex(r["w"]) == want.tobytes()
    # once the old holders are gone, nothing uses the old version any more
    first_id = first.info.model_id
    assert versions[first_id].in_use
    first.close()
    del held, sess_old, first
    gc.collect()
    versions = {m.id: m for m in shm_pool.models(all_versions=True)}
    assert first_id not in versions or not versions[first_id].in_use
    assert versions[second.info.model_id].in_use


def test_rewrite_with_mtime_set_back_is_noticed(shm_dir, shm_pool):
    """Same size, same inode, mtime put back (cp -p, rsync --inplace -t): size/mtime/inode alone would attach."""
    path = _ext_model(shm_dir / "m", _w(5))
    pyaccel.load_model(path, shm_pool, progress=False).close()
    gc.collect()
    data = str(shm_dir / "m" / "w.bin")
    st = os.stat(data)
    _rewrite_in_place(data, 0, _w(6).tobytes())
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(data)
    assert (now.st_size, now.st_mtime_ns, now.st_ino, now.st_dev) == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    m = pyaccel.load_model(path, shm_pool, progress=False)
    assert m.info.streamed
    assert np.array_equal(m.weights["W"], _w(6))
    _check_outputs(m, path, _x())
    # and from then on it attaches again
    assert not pyaccel.load_model(path, shm_pool, progress=False).info.streamed


def test_new_session_of_a_held_version_after_the_source_changed(pool_path, tmp_path):
    """A session made from a held (superseded) model after its file changed still computes with the old weights.

    On pools that no regular file backs (loop device, device-DAX) onnxruntime's
    optimizers are pointed at the model's own file for the weights they fold
    (here Transpose(W2t)); the file now holds other bytes, so they must not be.
    """
    size = 0 if pool_path.startswith("/dev/") else 64 * MiB
    gen = om.make_embedded(str(tmp_path / "m"))
    _, ref_old = _reference(gen.path, gen.feeds)
    with pyaccel.open_pool(pool_path, create=True, size=size) as pool:
        held = pyaccel.load_model(gen.path, pool, progress=False)
        scanned = onnxfile.scan(gen.path)
        old = {n: np.array(om.array_of(scanned.tensor(n))) for n in ("W1", "W2t")}
        for name in ("W1", "W2t"):
            r = scanned.tensor(name).range
            _rewrite_in_place(gen.path, r.offset, np.full(r.length // 4, 0.25, np.float32).tobytes())
        _, ref_new = _reference(gen.path, gen.feeds)
        assert not _same(ref_new[0], ref_old[0])
        sess = held.session(_opts(), providers=CPU)
        assert _same(sess.run(None, gen.feeds)[0], ref_old[0]), "a held version computed with the changed file's bytes"
        assert all(_same(held.weights[n], a) for n, a in old.items())
        # a new load streams the new version, whose sessions use the new bytes
        new = pyaccel.load_model(gen.path, pool, progress=False)
        assert new.info.streamed
        _check_outputs(new, gen.path, gen.feeds)
        del sess, held, new
        gc.collect()


def test_changed_source_never_attaches_while_a_reader_holds_the_old(shm_dir, shm_pool):
    """Changed twice while old versions are held: every load returns the file's current bytes."""
    path = _ext_model(shm_dir / "m", _w(10))
    held = []
    for seed in (10, 11, 12):
        if seed != 10:
            _rewrite_in_place(str(shm_dir / "m" / "w.bin"), 0, _w(seed).tobytes())
        m = pyaccel.load_model(path, shm_pool, progress=False)
        assert np.array_equal(m.weights["W"], _w(seed))
        held.append((seed, m.weights["W"]))
        again = pyaccel.load_model(path, shm_pool, progress=False)
        assert not again.info.streamed and again.info.model_id == m.info.model_id
    for seed, a in held:
        assert np.array_equal(a, _w(seed))


def test_deleted_source_is_not_served_from_the_pool(shm_dir, shm_pool):
    path = _ext_model(shm_dir / "m", _w(3))
    pyaccel.load_model(path, shm_pool, progress=False).close()
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        pyaccel.load_model(path, shm_pool, progress=False)
    # the external file gone: the model file is refused, not attached to the old copy
    path = _ext_model(shm_dir / "m", _w(3))
    pyaccel.load_model(path, shm_pool, progress=False).close()
    os.unlink(str(shm_dir / "m" / "w.bin"))
    with pytest.raises(ExternalDataError, match="does not exist"):
        pyaccel.load_model(path, shm_pool, progress=False)


# ---------------------------------------------------------------------------
# 5. Bad input: a clear pyaccel error, the pool as it was
# ---------------------------------------------------------------------------


def _identity_model(tensors: list[TensorProto]) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [t.name], [f"out_{t.name}"]) for t in tensors]
    outs = [helper.make_tensor_value_info(f"out_{t.name}", t.data_type, None) for t in tensors]
    m = helper.make_model(helper.make_graph(nodes, "g", [], outs, tensors), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _save_model(m: onnx.ModelProto, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return str(path)


def _ext_tensor(location: str, n: int = 300, offset: int = 0, length: int | None = None) -> TensorProto:
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[n])
    om._set_external(t, location, offset, 4 * n if length is None else length)
    return t


def _bad_truncated(d: Path) -> str:
    data = Path(om.make_embedded(str(d / "src")).path).read_bytes()
    p = d / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    return str(p)


def _bad_protobuf(d: Path) -> str:
    p = d / "garbage.onnx"
    p.write_bytes(b"\x08\x08\x3a" + b"\xff" * 11)  # ir_version 8, then a varint longer than 10 bytes
    return str(p)


def _bad_not_onnx(d: Path) -> str:
    p = d / "text.onnx"
    p.write_bytes(b"this is not a model\n" * 10)
    return str(p)


def _bad_length_past_end(d: Path) -> str:
    np.arange(300, dtype=np.float32).tofile(str(d / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("w.bin", offset=8)]), d / "model.onnx")


def _bad_offset_past_end(d: Path) -> str:
    np.arange(300, dtype=np.float32).tofile(str(d / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("w.bin", offset=5000)]), d / "model.onnx")


def _bad_raw_length(d: Path) -> str:
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10, 10], raw_data=b"\0" * 396)
    return _save_model(_identity_model([t]), d / "model.onnx")


def _bad_external_length(d: Path) -> str:
    np.arange(300, dtype=np.float32).tofile(str(d / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("w.bin", length=1196)]), d / "model.onnx")


def _bad_typed_count(d: Path) -> str:
    t = helper.make_tensor("W", TensorProto.INT64, [5], [1, 2, 3, 4, 5])
    t.dims[0] = 6
    return _save_model(_identity_model([t]), d / "model.onnx")


def _bad_traversal(d: Path) -> str:
    np.zeros(300, np.float32).tofile(str(d / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("../w.bin")]), d / "m" / "model.onnx")


def _bad_absolute(d: Path) -> str:
    np.zeros(300, np.float32).tofile(str(d / "w.bin"))
    return _save_model(_identity_model([_ext_tensor(str(d / "w.bin"))]), d / "m" / "model.onnx")


def _bad_symlink_file(d: Path) -> str:
    (d / "outside").mkdir()
    np.zeros(300, np.float32).tofile(str(d / "outside" / "w.bin"))
    (d / "m").mkdir()
    os.symlink(str(d / "outside" / "w.bin"), str(d / "m" / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("w.bin")]), d / "m" / "model.onnx")


def _bad_symlink_parent(d: Path) -> str:
    (d / "outside").mkdir()
    np.zeros(300, np.float32).tofile(str(d / "outside" / "w.bin"))
    (d / "m").mkdir()
    os.symlink(str(d / "outside"), str(d / "m" / "sub"))
    return _save_model(_identity_model([_ext_tensor("sub/w.bin")]), d / "m" / "model.onnx")


def _bad_hard_link(d: Path) -> str:
    (d / "m").mkdir()
    np.zeros(300, np.float32).tofile(str(d / "secret.bin"))
    os.link(str(d / "secret.bin"), str(d / "m" / "w.bin"))
    return _save_model(_identity_model([_ext_tensor("w.bin")]), d / "m" / "model.onnx")


def _bad_missing_external(d: Path) -> str:
    return _save_model(_identity_model([_ext_tensor("w.bin")]), d / "model.onnx")


BAD_INPUTS = {
    "truncated": (_bad_truncated, MalformedModelError, r"truncated|malformed protobuf|no graph"),
    "malformed_protobuf": (_bad_protobuf, MalformedModelError, "varint longer than 10 bytes"),
    "not_onnx": (_bad_not_onnx, MalformedModelError, "malformed protobuf at byte 0"),
    "length_past_end": (_bad_length_past_end, ExternalDataError,
                        r"offset 8 \+ length 1200 is past the end of the file \(1200 bytes\)"),
    "offset_past_end": (_bad_offset_past_end, ExternalDataError, "offset 5000 is past the end of the file"),
    "raw_length_vs_dtype_shape": (_bad_raw_length, MalformedModelError,
                                  r"raw_data holds 396 bytes but FLOAT x \(10, 10\) needs 400"),
    "external_length_vs_dtype_shape": (_bad_external_length, ExternalDataError,
                                       "length 1196 does not match dtype x shape = 1200 bytes"),
    "typed_count_vs_shape": (_bad_typed_count, MalformedModelError, r"int64_data holds 5 values but INT64 x \(6,\) needs 6"),
    "traversal": (_bad_traversal, ExternalDataError, r"contains '\.\.'"),
    "absolute_path": (_bad_absolute, ExternalDataError, "is an absolute path"),
    "symlink_escape_file": (_bad_symlink_file, ExternalDataError, r"symbolic link \(the file itself\)"),
    "symlink_escape_parent": (_bad_symlink_parent, ExternalDataError, r"symbolic link \(its component 'sub'\)"),
    "hard_link": (_bad_hard_link, ExternalDataError, "has 2 hard links"),
    "missing_external": (_bad_missing_external, ExternalDataError, "external data file 'w.bin' does not exist"),
}


@pytest.fixture
def busy_pool(shm_dir: Path, models_dir: Path) -> Iterator[pyaccel.Pool]:
    """A pool already holding a model (so that 'as it was' is not just 'empty')."""
    pool = _new_pool(shm_dir)
    gen = _gen(models_dir, "external_one_file")
    pyaccel.load_model(gen.path, pool, progress=False).close()
    gc.collect()
    try:
        yield pool
    finally:
        gc.collect()
        pool.close()


def _assert_pool_intact(pool: pyaccel.Pool, before: dict, generation_too: bool = True) -> None:
    after = _snapshot(pool)
    if generation_too:
        assert after == before
    else:
        _unchanged_except_generation(before, after)
    assert pool.fsck().problems == 0
    assert pool.verify() == []


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(tmp_path, busy_pool, case):
    make, cls, message = BAD_INPUTS[case]
    path = make(tmp_path)
    before = _snapshot(busy_pool)
    with pytest.raises(cls, match=message) as info:
        pyaccel.load_model(path, busy_pool, progress=False)
    assert isinstance(info.value, PyaccelError)
    err = info.value
    assert err.path.startswith(str(tmp_path)), err.path  # names the file at fault
    assert err.path in str(err)
    if cls is ExternalDataError or case.endswith("dtype_shape") or case == "typed_count_vs_shape":
        assert err.tensor == "W" and "'W'" in str(err)
    # scanning fails before the pool is touched: not even the generation moves
    _assert_pool_intact(busy_pool, before)


def test_bad_input_replacing_a_loaded_model(tmp_path, busy_pool):
    """A model in the pool whose file is then broken: refused, and the old copy is not handed out."""
    d = tmp_path / "m"
    path = _ext_model(d, _w(4))
    pyaccel.load_model(path, busy_pool, progress=False).close()
    gc.collect()
    before = _snapshot(busy_pool)
    Path(path).write_bytes(Path(path).read_bytes()[:-7])
    with pytest.raises(MalformedModelError):
        pyaccel.load_model(path, busy_pool, progress=False)
    _assert_pool_intact(busy_pool, before)
    # external data file shrunk: refused too
    path = _ext_model(d, _w(4))
    pyaccel.load_model(path, busy_pool, progress=False).close()
    gc.collect()
    before = _snapshot(busy_pool)
    os.truncate(str(d / "w.bin"), 1000)
    with pytest.raises(ExternalDataError, match="past the end of the file"):
        pyaccel.load_model(path, busy_pool, progress=False)
    _assert_pool_intact(busy_pool, before)


def test_pool_too_small(tmp_path, busy_pool):
    gen = om.make_matmul_chain(str(tmp_path / "big.onnx"), 2, 3072, external="big.w")  # 72 MiB > the 64 MiB pool
    before = _snapshot(busy_pool)
    with pytest.raises(PoolFullError, match=r"needs \d+ bytes") as info:
        pyaccel.load_model(gen.path, busy_pool, progress=False)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert busy_pool.path in str(info.value)
    _assert_pool_intact(busy_pool, before)


def test_pool_full_of_models_in_use(tmp_path, shm_pool):
    """The space is held by a model a process uses: PoolFullError, and that model stays intact."""
    a = om.make_matmul_chain(str(tmp_path / "a.onnx"), 1, 3072, external="a.w")  # 36 MiB
    b = om.make_matmul_chain(str(tmp_path / "b.onnx"), 1, 3072, external="b.w")
    held = pyaccel.load_model(a.path, shm_pool, progress=False)
    before = _snapshot(shm_pool)
    with pytest.raises(PoolFullError, match="in use"):
        pyaccel.load_model(b.path, shm_pool, progress=False)
    _assert_pool_intact(shm_pool, before)
    _check_outputs(held, a.path, a.feeds)
    # once nobody uses it, the LRU model makes room
    held.close()
    del held
    gc.collect()
    m = pyaccel.load_model(b.path, shm_pool, progress=False)
    assert m.info.streamed
    assert [r.name for r in shm_pool.models()] == [os.path.realpath(b.path)]


def _truncate_before_streaming(monkeypatch, victim: str, size: int) -> None:
    """Shrink `victim` after the scan (and after the loader opened it), as write_model starts."""
    real = pool_mod.Pool.write_model

    def write_model(self, *a, **kw):
        os.truncate(victim, size)
        return real(self, *a, **kw)

    monkeypatch.setattr(pool_mod.Pool, "write_model", write_model)


@pytest.mark.parametrize("layout", ["external", "embedded", "converted"])
def test_source_truncated_after_scan(tmp_path, busy_pool, monkeypatch, layout):
    """The file shrinks between the scan and the streaming: a StaleSourceError naming it, no half model."""
    if layout == "external":
        gen = om.make_matmul_chain(str(tmp_path / "c.onnx"), 4, 512, external="c.w")
        victim = gen.files[1]
    elif layout == "embedded":
        gen = om.make_matmul_chain(str(tmp_path / "c.onnx"), 4, 512, external=None)
        victim = gen.path
    else:  # only tensors that are converted when streamed (sparse): the produce path reads the file
        gen = om.make_sparse(str(tmp_path))
        victim = gen.path
    before = _snapshot(busy_pool)
    _truncate_before_streaming(monkeypatch, victim, os.path.getsize(victim) // 2)
    with pytest.raises(StaleSourceError, match="changed") as info:
        pyaccel.load_model(gen.path, busy_pool, progress=False)
    assert isinstance(info.value, ModelError) and info.value.path == victim
    monkeypatch.undo()
    # the load was begun in the pool's catalog and dropped: only the generation moved
    _assert_pool_intact(busy_pool, before, generation_too=False)
    assert busy_pool.status().n_loading == 0


def test_source_changed_between_scan_and_open(tmp_path, busy_pool, monkeypatch):
    """The external file is replaced right after the scan: refused when the loader opens it."""
    gen = om.make_matmul_chain(str(tmp_path / "c.onnx"), 2, 512, external="c.w")
    real_scan = onnxfile.scan

    def scan(path):
        s = real_scan(path)
        tmp = gen.files[1] + ".new"
        shutil.copyfile(gen.files[1], tmp)
        os.replace(tmp, gen.files[1])  # same bytes, another inode
        return s

    monkeypatch.setattr(onnxfile, "scan", scan)
    before = _snapshot(busy_pool)
    with pytest.raises(StaleSourceError, match="changed since it was scanned"):
        pyaccel.load_model(gen.path, busy_pool, progress=False)
    _assert_pool_intact(busy_pool, before)
    monkeypatch.undo()
    m = pyaccel.load_model(gen.path, busy_pool, progress=False)
    _check_outputs(m, gen.path, gen.feeds)


def test_missing_model_file(tmp_path, busy_pool):
    before = _snapshot(busy_pool)
    with pytest.raises(FileNotFoundError):
        pyaccel.load_model(str(tmp_path / "nope.onnx"), busy_pool)
    _assert_pool_intact(busy_pool, before)


# ---------------------------------------------------------------------------
# 6. Ctrl-C mid-load
# ---------------------------------------------------------------------------

_CHILD_CTRL_C = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import numpy as np, pyaccel, pyaccel.loader
    from pyaccel import pool as P

    real = P._run_stream
    streams = []
    def run_stream(stream, *a, **kw):
        streams.append(stream)
        if sys.argv[4] == "self":  # SIGINT once the copy has really begun (deterministic)
            threading.Thread(target=interrupt_when_copying, args=(stream,), daemon=True).start()
        print("streaming", flush=True)
        if sys.argv[4] == "parent":  # the load is begun in the pool: wait here for the parent's SIGINT
            end = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(0.001)
        return real(stream, *a, **kw)
    def interrupt_when_copying(stream):
        while stream.progress()[0] == 0:
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGINT)
    P._run_stream = run_stream

    pool = pyaccel.open_pool(sys.argv[1])
    t0 = time.perf_counter()
    try:
        m = pyaccel.load_model(sys.argv[2], pool, progress=sys.argv[3] == "1")
    except KeyboardInterrupt:
        t1 = time.perf_counter()
        st = pool.status()
        rep = pool.fsck()
        done, total = streams[0].progress()
        print(json.dumps({"interrupted": True, "after_s": t1 - t0, "used": st.used, "n_loading": st.n_loading,
                          "copied": done, "to_copy": total,
                          "n_models": st.n_models, "problems": rep.problems,
                          "loading": [m.name for m in pool.models(all_versions=True) if m.state != "ready"]}),
              flush=True)
    else:
        print(json.dumps({"interrupted": False}), flush=True)
    """
)


@pytest.fixture(scope="module")
def big_model() -> Iterator[om.Generated]:
    """A 256 MiB model (4 x 4096^2 float32, external data) on tmpfs."""
    d = tempfile.mkdtemp(prefix="pyaccel-test-big-", dir="/dev/shm")
    try:
        yield om.make_matmul_chain(os.path.join(d, "big.onnx"), 4, 4096, external="big.w")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("progress, sender", [(False, "parent"), (True, "parent"), (False, "self"), (True, "self")],
                         ids=["no-bar", "bar", "no-bar-while-copying", "bar-while-copying"])
def test_ctrl_c_mid_load(shm_dir, models_dir, big_model, progress, sender):
    """SIGINT from the parent once the load is begun in the pool (the child holds just before the copy), or
    from the child itself once bytes are being copied: both points are reached every time."""
    pool_file = str(shm_dir / "p.pool")
    with _new_pool(shm_dir, 320 * MiB) as pool:
        pyaccel.load_model(_gen(models_dir, "embedded").path, pool, progress=False).close()
        gc.collect()
        before = _snapshot(pool)
    # one thread, small requests: a copy slow enough to be cut short on any machine
    env = dict(python_env(), PYACCEL_STREAM_THREADS="1", PYACCEL_STREAM_CHUNK=str(64 << 10))
    p = subprocess.Popen([sys.executable, "-c", _CHILD_CTRL_C, pool_file, big_model.path, "1" if progress else "0", sender],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "streaming"
        if sender == "parent":
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    r = json.loads(out)
    assert r["interrupted"], "the load finished before SIGINT arrived"
    # Ctrl-C cut the copy short: it did not wait for the whole model (with or without a bar)
    assert r["copied"] < r["to_copy"] and r["to_copy"] >= 256 * MiB, r
    if sender == "self":
        assert r["copied"] > 0  # interrupted while copying
    # in the interrupted process itself: nothing half-loaded, nothing leaked
    assert r["problems"] == 0 and r["n_loading"] == 0 and r["loading"] == []
    assert r["used"] == before["used"] and r["n_models"] == before["n_models"]
    with pyaccel.open_pool(pool_file) as pool:
        _assert_pool_intact(pool, before, generation_too=False)
        # and the model loads completely afterwards
        m = pyaccel.load_model(big_model.path, pool, progress=False)
        assert m.info.streamed and m.info.nbytes == 256 * MiB
        rows = np.array([0, 2047, 4095])
        for i in range(4):
            t = om.StreamedTensor(f"W{i}", (4096, 4096), seed=i)
            assert np.array_equal(m.weights[t.name][rows], t.rows(rows))
        assert pool.verify() == []
        del m
        gc.collect()
    print(f"\nCtrl-C ({'bar' if progress else 'no bar'}, from {sender}): KeyboardInterrupt {r['after_s'] * 1e3:.0f} ms after the call, "
          f"{r['copied'] / MiB:.0f} of {r['to_copy'] / MiB:.0f} MiB copied")


_CHILD_LOAD = textwrap.dedent(
    """
    import json, sys, time
    import pyaccel
    from pyaccel import pool as P

    real = P._run_stream
    def run_stream(*a, **kw):
        print("streaming", flush=True)
        if sys.argv[3] == "stall":  # the load is begun in the pool: stay here until killed
            time.sleep(120)
        return real(*a, **kw)
    P._run_stream = run_stream

    print("start", flush=True)
    m = pyaccel.load_model(sys.argv[2], sys.argv[1], progress=False)
    print(json.dumps({"streamed": m.info.streamed, "id": m.info.model_id}), flush=True)
    """
)


def test_kill_9_mid_load_then_a_waiting_loader_takes_over(shm_dir, big_model):
    """A is killed while streaming; B, which was waiting for it, streams the model itself; no half model, no leak."""
    pool_file = str(shm_dir / "p.pool")
    _new_pool(shm_dir, 320 * MiB).close()  # room for one copy only: a leaked half load would not fit
    args = [sys.executable, "-c", _CHILD_LOAD, pool_file, big_model.path]
    a = subprocess.Popen(args + ["stall"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    b = None
    try:
        assert a.stdout.readline().strip() == "start"
        assert a.stdout.readline().strip() == "streaming"
        with pyaccel.open_pool(pool_file) as pool:
            assert pool.status().n_loading == 1
        b = subprocess.Popen(args + ["go"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
        assert b.stdout.readline().strip() == "start"
        time.sleep(0.3)  # B is now waiting for A
        assert b.poll() is None
        a.kill()
        a.communicate()
        out, err = b.communicate(timeout=120)
        assert b.returncode == 0, err
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    r = json.loads(out.strip().splitlines()[-1])
    assert r["streamed"] is True
    with pyaccel.open_pool(pool_file) as pool:
        assert [(m.id, m.state) for m in pool.models(all_versions=True)] == [(r["id"], "ready")]
        st = pool.status()
        assert st.n_loading == 0 and st.used < 256 * MiB + 1 * MiB
        assert pool.fsck().problems == 0
        assert pool.verify() == []


_CHILD_WRITE_MODEL_CTRL_C = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, pyaccel
    from pyaccel import pool as P
    from pyaccel.pool import TensorWrite

    import os, signal, threading

    real = P._run_stream
    streams = []
    def run_stream(stream, *a, **kw):
        streams.append(stream)
        threading.Thread(target=interrupt_when_copying, args=(stream,), daemon=True).start()
        return real(stream, *a, **kw)
    def interrupt_when_copying(stream):  # SIGINT once the copy has really begun
        while stream.progress()[0] == 0:
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGINT)
    P._run_stream = run_stream

    pool = pyaccel.open_pool(sys.argv[1])
    fd = open(sys.argv[2], "rb")
    writes = [TensorWrite(f"W{i}", 1, (4096, 4096), 64 << 20, fd=fd.fileno(), offset=i * (64 << 20)) for i in range(4)]
    try:
        pool.write_model("direct", writes)
        print(json.dumps({"interrupted": False}))
    except KeyboardInterrupt:
        done, total = streams[0].progress()
        print(json.dumps({"interrupted": True, "copied": done, "to_copy": total}))
    """
)


def test_pool_write_model_ctrl_c_without_progress(shm_dir, big_model):
    """Pool.write_model(progress=None) itself stops at once too (it used to copy on the calling thread
    without the GIL, acting on Ctrl-C only after the whole model; fixed in 9a218d8)."""
    pool_file = str(shm_dir / "p.pool")
    _new_pool(shm_dir, 320 * MiB).close()
    env = dict(python_env(), PYACCEL_STREAM_THREADS="1", PYACCEL_STREAM_CHUNK=str(64 << 10))
    p = subprocess.Popen([sys.executable, "-c", _CHILD_WRITE_MODEL_CTRL_C, pool_file, big_model.files[1]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    r = json.loads(out)
    assert r["interrupted"]
    assert r["copied"] < r["to_copy"], f"Ctrl-C waited for the whole copy: {r}"


# ---------------------------------------------------------------------------
# 7. verify=True finds a flipped byte
# ---------------------------------------------------------------------------


def test_verify_detects_a_flipped_byte(tmp_path, shm_pool):
    w1, w2 = _w(20), _w(21, (128, 64))
    d = tmp_path / "m"
    d.mkdir()
    tensors = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["Y"])],
                          "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 256])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(d / "m.onnx")
    onnx.save(m, path)
    model = pyaccel.load_model(path, shm_pool, progress=False, verify=True)  # clean: no error
    rec = {t.name: t for t in shm_pool.tensors(model.info.model_id)}
    with open(shm_pool.path, "rb") as f:  # the record's offset is the byte offset in the pool's file
        f.seek(rec["W2"].offset)
        assert f.read(rec["W2"].nbytes) == w2.tobytes()
    model.close()
    del model
    gc.collect()
    with open(shm_pool.path, "r+b") as f:
        f.seek(rec["W2"].offset + 1000)
        b = f.read(1)
        f.seek(rec["W2"].offset + 1000)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(PoolCorruptError, match=r"tensor 'W2' does not match its checksum") as info:
        pyaccel.load_model(path, shm_pool, progress=False, verify=True)
    assert "'W1'" not in str(info.value) and shm_pool.path in str(info.value)
    del info
    gc.collect()
    # without verify the (unchanged) source attaches: verify is what catches damage in the pool
    plain = pyaccel.load_model(path, shm_pool, progress=False)
    assert not plain.info.streamed
    assert not np.array_equal(plain.weights["W2"], w2) and np.array_equal(plain.weights["W1"], w1)


# ---------------------------------------------------------------------------
# 8. close / with, and leases
# ---------------------------------------------------------------------------


def test_close_and_with_release_the_model(models_dir, shm_pool):
    gen = _gen(models_dir, "external_one_file")
    name = os.path.realpath(gen.path)
    model = pyaccel.load_model(gen.path, shm_pool, progress=False)
    with pytest.raises(ModelInUseError):
        shm_pool.evict(name)  # the Model itself holds the lease
    arr = model.weights["W1"]
    sess = model.session(_opts(), providers=CPU)
    y = sess.run(None, gen.feeds)[0]
    model.close()
    assert model.closed
    model.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        model.weights
    with pytest.raises(ValueError, match="closed"):
        model.session()
    del model
    gc.collect()
    with pytest.raises(ModelInUseError):
        shm_pool.evict(name)  # an array and a session are alive
    del arr
    gc.collect()
    with pytest.raises(ModelInUseError):
        shm_pool.evict(name)  # the session is alive
    assert _same(sess.run(None, gen.feeds)[0], y)  # and still serves the weights
    del sess
    gc.collect()
    before = shm_pool.status().used
    shm_pool.evict(name)
    assert shm_pool.models() == [] and shm_pool.status().used < before

    with pyaccel.load_model(gen.path, shm_pool, progress=False) as model:
        assert model.info.streamed
        model.run(None, gen.feeds)
        with pytest.raises(ModelInUseError):
            shm_pool.evict(name)
    assert model.closed
    del model
    gc.collect()
    shm_pool.evict(name)
    assert shm_pool.models() == []
    assert shm_pool.fsck().problems == 0


def test_array_outlives_its_model_and_keeps_its_bytes(models_dir, shm_pool):
    gen = _gen(models_dir, "embedded")
    with pyaccel.load_model(gen.path, shm_pool, progress=False) as model:
        w = model.weights["W1"]
        want = w.copy()
    gc.collect()
    with pytest.raises(ModelInUseError):
        shm_pool.evict(os.path.realpath(gen.path))
    # other loads (and their allocations) do not reuse memory still viewed
    other = pyaccel.load_model(_gen(models_dir, "subgraphs").path, shm_pool, progress=False)
    assert np.array_equal(w, want)
    del other, w
    gc.collect()
    shm_pool.evict(os.path.realpath(gen.path))


# ---------------------------------------------------------------------------
# 9. progress
# ---------------------------------------------------------------------------


def test_progress_bar_on_stderr(tmp_path, shm_pool, capsys):
    gen = om.make_matmul_chain(str(tmp_path / "bar.onnx"), 2, 1024, external="bar.w")
    model = pyaccel.load_model(gen.path, shm_pool, progress=True)
    out, err = capsys.readouterr()
    assert model.info.streamed
    assert out == ""
    assert "bar.onnx" in err and "%|" in err and "8.00M" in err, err
    _check_outputs(model, gen.path, gen.feeds)


@pytest.mark.parametrize("progress", [False, None])
def test_no_progress_bar(tmp_path, shm_pool, capsys, progress):
    """progress=False: never; None: only on a terminal (captured stderr is not one)."""
    gen = om.make_matmul_chain(str(tmp_path / "bar.onnx"), 2, 1024, external="bar.w")
    model = pyaccel.load_model(gen.path, shm_pool, progress=progress)
    assert model.info.streamed
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------
# Odd tensors, names, partitions, read-only pools
# ---------------------------------------------------------------------------


def _save_graph(g: onnx.GraphProto, path: Path, opset: int = 21, ir: int = 10) -> str:
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return _save_model(m, path)


def test_odd_tensors(tmp_path, shm_pool):
    """Empty, int4 (packed two a byte), float8 and 0-d tensors; two initializers naming the same bytes."""
    rng = np.random.default_rng(30)
    q = rng.integers(-8, 8, 4096).astype(np.int8)
    f8 = rng.standard_normal(2048).astype(np.float32)
    inits = [numpy_helper.from_array(np.zeros((0, 4), np.float32), "Z"),
             helper.make_tensor("Q", TensorProto.INT4, [4096], q.tolist()),
             helper.make_tensor("F8", TensorProto.FLOAT8E4M3FN, [2048], f8.tolist()),
             numpy_helper.from_array(np.array(0.5, np.float32), "S")]
    g = helper.make_graph(
        [helper.make_node("Identity", ["Z"], ["zo"]), helper.make_node("DequantizeLinear", ["Q", "S"], ["dq"]),
         helper.make_node("Cast", ["F8"], ["f8o"], to=TensorProto.FLOAT),
         helper.make_node("Concat", ["X", "Z"], ["cat"], axis=0)],
        "odd", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("zo", "dq", "f8o", "cat")], inits)
    path = _save_graph(g, tmp_path / "odd" / "odd.onnx")
    feeds = {"X": np.ones((2, 4), np.float32)}
    model = pyaccel.load_model(path, shm_pool, progress=False)
    assert model.weights["Z"].shape == (0, 4) and model.weights["Q"].shape == (4096,)
    assert np.array_equal(model.weights["Q"].astype(np.int8), q)
    _check_outputs(model, path, feeds)

    w = _w(31, (64, 64))
    d = tmp_path / "same"
    d.mkdir()
    w.tofile(str(d / "w.bin"))
    ts = []
    for n in ("A", "B"):
        t = TensorProto(name=n, data_type=TensorProto.FLOAT, dims=[64, 64])
        om._set_external(t, "w.bin", 0, w.nbytes)
        ts.append(t)
    g = helper.make_graph([helper.make_node("MatMul", ["X", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["Y"])], "same",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 64])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], ts)
    path = _save_graph(g, d / "same.onnx", 17, 8)
    model = pyaccel.load_model(path, shm_pool, progress=False)
    assert model.weights["A"].ctypes.data == model.weights["B"].ctypes.data  # the same bytes, stored once
    assert np.array_equal(model.weights["B"], w)
    _check_outputs(model, path, {"X": np.ones((2, 64), np.float32)})


def test_name_and_partition(tmp_path, shm_dir):
    gen = om.make_matmul_chain(str(tmp_path / "c.onnx"), 2, 512, external="c.w")
    with pyaccel.open_pool(str(shm_dir / "p.pool"), create=True, size=64 * MiB, partitions=[("a", 16 * MiB), ("b", 0)]) as pool:
        m1 = pyaccel.load_model(gen.path, pool, progress=False, partition="a")
        m2 = pyaccel.load_model(gen.path, pool, progress=False, name="other", partition="b")
        assert m1.info.name == os.path.realpath(gen.path) and m2.info.name == "other"
        assert m2.info.streamed and m2.info.model_id != m1.info.model_id
        assert {m.name: m.partition for m in pool.models()} == {m1.info.name: "a", "other": "b"}
        again = pyaccel.load_model(gen.path, pool, progress=False, name="other")
        assert not again.info.streamed and again.info.model_id == m2.info.model_id
        _check_outputs(again, gen.path, gen.feeds)
        before = _snapshot(pool)
        with pytest.raises(FileNotFoundError, match="no partition called nope"):
            pyaccel.load_model(gen.path, pool, progress=False, name="x", partition="nope")
        _assert_pool_intact(pool, before, generation_too=False)
        del m1, m2, again
        gc.collect()


def test_partition_holds_its_own_models_bytes(tmp_path, shm_dir):
    """The same file under two names in two partitions: each copy in its own partition (dedup used to
    point the second at the first's extents across partitions; fixed in 9a218d8)."""
    gen = om.make_matmul_chain(str(tmp_path / "c.onnx"), 2, 512, external="c.w")
    with pyaccel.open_pool(str(shm_dir / "p.pool"), create=True, size=64 * MiB, partitions=[("a", 16 * MiB), ("b", 0)]) as pool:
        m1 = pyaccel.load_model(gen.path, pool, progress=False, partition="a")
        m2 = pyaccel.load_model(gen.path, pool, progress=False, name="other", partition="b")
        parts = {p.name: p for p in pool.status().partitions}
        b = parts["b"]
        outside = [t.name for t in pool.tensors("other") if not b.offset <= t.offset < b.offset + b.size]
        del m1, m2
        gc.collect()
        assert not outside, f"tensors {outside} of the model in partition b lie outside it; b uses {b.used} bytes"


def test_read_only_pool_attaches_and_refuses_to_load(models_dir, shm_pool):
    loaded = _gen(models_dir, "conv_bn")
    pyaccel.load_model(loaded.path, shm_pool, progress=False).close()
    gc.collect()
    before = _snapshot(shm_pool)
    with pyaccel.open_pool(shm_pool.path, readonly=True) as ro:
        m = pyaccel.load_model(loaded.path, ro, progress=False)
        assert not m.info.streamed
        _check_zero_copy(m, ro)
        _check_outputs(m, loaded.path, loaded.feeds)
        with pytest.raises(OSError, match="read-only") as info:
            pyaccel.load_model(_gen(models_dir, "embedded").path, ro, progress=False)
        assert info.value.errno == errno.EROFS
        del m, info
        gc.collect()
    _assert_pool_intact(shm_pool, before)


def test_unreadable_graph_record_is_streamed_again(shm_dir, models_dir):
    """A pooled model whose graph record this version cannot read (an older
    pyaccel's format) is not an error: the model is streamed again."""
    g = _gen(models_dir, "embedded")
    with _new_pool(shm_dir) as pool:
        first = pyaccel.load_model(g.path, pool, progress=False)
        meta_off = pool._drv.model_get(first.info.model_id)["meta_offset"]
        first.close()
        del first
        gc.collect()
        with open(pool.path, "r+b") as f:  # an older magic in the record
            f.seek(meta_off + 6)
            f.write(b"1")
        again = pyaccel.load_model(g.path, pool, progress=False)
        assert again.info.streamed
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_prepacking", "1")
        want = ort.InferenceSession(g.path, so).run(None, g.feeds)
        got = again.session().run(None, g.feeds)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
