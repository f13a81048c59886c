"""Tests of pyaccel.ortsession: zero-copy sessions, bit-identical to onnxruntime loading the file."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import onnx_models as om
from pyaccel.errors import MalformedModelError
from pyaccel.onnxfile import scan
from pyaccel.ortsession import make_session, session_binding

CPU = ["CPUExecutionProvider"]


def _opts(prepack: bool = False, level: ort.GraphOptimizationLevel | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    if level is not None:
        so.graph_optimization_level = level
    return so


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical (NaN-safe: compares bytes), with the same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return list(a.reshape(-1)) == list(b.reshape(-1))
    return a.tobytes() == b.tobytes()


def _arrays(s) -> dict[str, np.ndarray]:
    return {t.name: om.array_of(t) for t in s.tensors if t.dtype != TensorProto.STRING}


def _check_identical(path: str, feeds: dict, prepack: bool = False, level=None):
    """Run the file and the pool-style session with the same options; assert bit-identical outputs."""
    ref_sess = ort.InferenceSession(path, _opts(prepack, level), providers=CPU)
    ref = ref_sess.run(None, feeds)
    s = scan(path)
    sess = make_session(s.graph_bytes, _arrays(s), _opts(prepack, level), providers=CPU, prepack=prepack)
    out = sess.run(None, feeds)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref_sess.get_outputs()]
    for o, r, meta in zip(out, ref, sess.get_outputs()):
        assert _same(o, r), f"output {meta.name} differs"
    return s, sess


# ---------------------------------------------------------------------------
# Bit-identical outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(om.CORRECTNESS_MODELS))
def test_bit_identical(tmp_path, name):
    gen = om.CORRECTNESS_MODELS[name](str(tmp_path))
    s, sess = _check_identical(gen.path, gen.feeds)
    b = session_binding(sess)
    stripped = {t.name for t in s.tensors if not t.inline}
    assert set(b.file_backed) | set(b.copied) >= stripped
    # a tensor read from its file range is served zero-copy; only convert()ed arrays are copied
    assert set(b.copied) == {t.name for t in s.tensors if not t.inline and t.range is None}


@pytest.mark.parametrize("name", ["embedded", "external_one_file", "conv_bn", "subgraphs"])
def test_bit_identical_prepacked(tmp_path, name):
    gen = om.CORRECTNESS_MODELS[name](str(tmp_path))
    _check_identical(gen.path, gen.feeds, prepack=True)


@pytest.mark.parametrize("name", ["constants", "subgraphs", "dtypes", "conv_bn"])
@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC"])
def test_bit_identical_other_optimization_levels(tmp_path, name, level):
    gen = om.CORRECTNESS_MODELS[name](str(tmp_path))
    _check_identical(gen.path, gen.feeds, level=getattr(ort.GraphOptimizationLevel, level))


def test_subgraph_branches_and_loop_counts(tmp_path):
    gen = om.make_subgraphs(str(tmp_path))
    for flag in (True, False):
        for trip in (0, 1, 4):
            feeds = dict(gen.feeds, flag=np.array(flag), notflag=np.array(not flag), trip=np.array(trip, np.int64))
            _check_identical(gen.path, feeds)


def test_torch_export(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, the CPU wheel)")
    gen = om.make_torch_exported(str(tmp_path))
    s, _ = _check_identical(gen.path, gen.feeds)
    assert s.nbytes > 16 * 8 * 8 * 64 * 4
    _check_identical(gen.path, gen.feeds, prepack=True)


def _backend_params():
    out = []
    for p in om.backend_models():
        rel = os.path.relpath(p, os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data"))
        out.append(pytest.param(p, id=os.path.dirname(rel)))
    return out


@pytest.mark.parametrize("path", _backend_params())
def test_onnx_backend_model(path):
    feeds = om.backend_feeds(path)
    if feeds is None:
        pytest.skip("no test_data_set_0 inputs")
    try:
        ort.InferenceSession(path, _opts(), providers=CPU).run(None, feeds)
    except Exception as e:  # onnxruntime's own limits, e.g. opset-6 kernels it no longer has
        pytest.skip(f"onnxruntime cannot run this model from the file: {str(e).splitlines()[0][:160]}")
    _check_identical(path, feeds)


@pytest.mark.slow
def test_model_over_2gib_external(tmp_path):
    """2.3 GiB of external data in one file (offsets past 2**31); Gather touches a few rows."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    d = os.path.join(root, f"pyaccel-test-2g-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    try:
        tables = [om.StreamedTensor("E0", (327680, 1024), 1), om.StreamedTensor("E1", (262144, 1024), 2), om.StreamedTensor("E2", (1024, 64), 3)]
        gen = om.make_gather_model(os.path.join(d, "big.onnx"), tables, external="big.weights")
        assert os.path.getsize(gen.files[1]) > 2**31 + 2**28
        s = scan(gen.path)
        assert s.tensor("E2").range.offset > 2**31
        ref = ort.InferenceSession(gen.path, _opts(), providers=CPU).run(None, gen.feeds)
        sess = make_session(s.graph_bytes, _arrays(s), _opts(), providers=CPU)
        out = sess.run(None, gen.feeds)
        for k, (o, r) in enumerate(zip(out, ref)):
            assert _same(o, r)
            rows = gen.feeds[f"idx{k}"]
            assert np.array_equal(o, tables[k].rows(rows).reshape(o.shape))
        assert not session_binding(sess).copied
        del sess, out, ref
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


# ---------------------------------------------------------------------------
# Zero copy
# ---------------------------------------------------------------------------


def test_ortvalues_view_the_arrays(tmp_path):
    gen = om.make_external_one_file(str(tmp_path))
    s = scan(gen.path)
    arrays = _arrays(s)
    for a in arrays.values():
        assert not a.flags.writeable  # read-only views, like the pool's
    sess = make_session(s.graph_bytes, arrays, _opts(), providers=CPU)
    b = session_binding(sess)
    for name, ov in b.ortvalues.items():
        assert ov.data_ptr() == arrays[name].__array_interface__["data"][0], name
    ext = os.path.join(str(tmp_path), "ext1.weights")
    assert {path for path, _ in b.file_backed.values()} == {os.path.realpath(ext)}
    assert b.file_backed["W1"][1] == s.tensor("W1").range.offset


def test_session_keeps_its_arrays_alive(tmp_path):
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    sess = make_session(s.graph_bytes, {t.name: t.convert() for t in s.tensors}, _opts(), providers=CPU)
    first = sess.run(None, gen.feeds)[0]
    gc.collect()
    np.full(1 << 20, 7, np.float32)  # reuse freed memory, if any were freed
    assert _same(sess.run(None, gen.feeds)[0], first)
    assert set(session_binding(sess).copied) == {"W1", "W2t"}  # anonymous memory: embedded for the optimizers


_RSS_PROBE = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = {paths!r}
    import numpy as np, onnxruntime as ort
    import onnx_models as om
    from pyaccel.onnxfile import scan
    from pyaccel.ortsession import make_session, session_binding

    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    def opts():
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    s = scan({model!r})
    arrays = {{t.name: om.array_of(t) for t in s.tensors}}
    base = anon()
    t0 = time.perf_counter()
    sess = make_session(s.graph_bytes, arrays, opts(), providers=["CPUExecutionProvider"])
    t_pool = time.perf_counter() - t0
    y = sess.run(None, {{"X": np.full((1, {dim}), 0.01, np.float32)}})[0]
    growth = anon() - base
    copied = len(session_binding(sess).copied)
    del sess
    t0 = time.perf_counter()
    ref = ort.InferenceSession({model!r}, opts(), providers=["CPUExecutionProvider"])
    t_file = time.perf_counter() - t0
    same = ref.run(None, {{"X": np.full((1, {dim}), 0.01, np.float32)}})[0].tobytes() == y.tobytes()
    print(growth, copied, same, t_pool, t_file)
    """
)


@pytest.mark.slow
def test_session_does_not_copy_a_large_model(tmp_path):
    """512 MiB of weights: anonymous RSS grows by far less than that, outputs equal the file's."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    d = os.path.join(root, f"pyaccel-test-zc-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    try:
        dim = 4096
        gen = om.make_matmul_chain(os.path.join(d, "chain.onnx"), layers=8, dim=dim, external="chain.weights")
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE.format(paths=[here, os.path.dirname(here)], model=gen.path, dim=dim)],
            capture_output=True, text=True, check=True, timeout=300,
        ).stdout.split()
        growth, copied, same, t_pool, t_file = int(out[0]), int(out[1]), out[2] == "True", float(out[3]), float(out[4])
        assert same and copied == 0
        assert growth < 64 << 20, f"session creation + one run grew anonymous RSS by {growth >> 20} MiB for 512 MiB of weights"
        print(f"512 MiB external model: session from arrays {t_pool * 1e3:.1f} ms, from the file {t_file * 1e3:.1f} ms (prepacking off)")
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


# ---------------------------------------------------------------------------
# Misuse
# ---------------------------------------------------------------------------


def test_missing_wrong_and_unknown_arrays(tmp_path):
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    arrays = _arrays(s)
    with pytest.raises(ValueError, match=r"no array for stripped initializer\(s\) \['W1'\]"):
        make_session(s.graph_bytes, {k: v for k, v in arrays.items() if k != "W1"}, providers=CPU)
    with pytest.raises(ValueError, match=r"array for initializer 'W1' has shape \(48, 64\), the graph says \(64, 48\)"):
        make_session(s.graph_bytes, dict(arrays, W1=np.zeros((48, 64), np.float32)), providers=CPU)
    with pytest.raises(ValueError, match="array for initializer 'W1' has dtype float64, the graph says float32"):
        make_session(s.graph_bytes, dict(arrays, W1=np.zeros((64, 48))), providers=CPU)
    with pytest.raises(ValueError, match=r"not initializers of this graph: \['nope'\]"):
        make_session(s.graph_bytes, dict(arrays, nope=np.zeros(1, np.float32)), providers=CPU)
    with pytest.raises(MalformedModelError, match="does not decode"):
        make_session(b"\x3a\xff", arrays, providers=CPU)


def test_non_contiguous_array_is_copied(tmp_path):
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    arrays = _arrays(s)
    arrays["W1"] = np.asfortranarray(np.array(arrays["W1"]))
    ref = ort.InferenceSession(gen.path, _opts(), providers=CPU).run(None, gen.feeds)[0]
    sess = make_session(s.graph_bytes, arrays, _opts(), providers=CPU)
    assert _same(sess.run(None, gen.feeds)[0], ref)
    assert "W1" in session_binding(sess).copied


def test_graph_bytes_alone_are_not_loadable(tmp_path):
    """The stripped graph names no real file: onnxruntime refuses it instead of reading anything."""
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    with pytest.raises(Exception, match="pyaccel:stripped"):
        ort.InferenceSession(s.graph_bytes, _opts(), providers=CPU)


_LOG_PROBE = textwrap.dedent(
    """
    import sys
    sys.path[:0] = {paths!r}
    import onnxruntime as ort
    import onnx_models as om
    from pyaccel.onnxfile import scan
    from pyaccel.ortsession import make_session
    s = scan({model!r})
    so = ort.SessionOptions()
    so.log_severity_level = 0
    make_session(s.graph_bytes, {{t.name: om.array_of(t) for t in s.tensors}}, so, providers=["CPUExecutionProvider"])
    """
)


def test_subgraph_weights_come_from_the_arrays(tmp_path):
    """onnxruntime's own log says it uses the supplied OrtValue for every stripped weight, subgraphs included."""
    gen = om.make_subgraphs(str(tmp_path))
    s = scan(gen.path)
    here = os.path.dirname(os.path.abspath(__file__))
    log = subprocess.run(
        [sys.executable, "-c", _LOG_PROBE.format(paths=[here, os.path.dirname(here)], model=gen.path)], capture_output=True, text=True, check=True, timeout=120
    ).stderr
    used = set(re.findall(r"Using user supplied initializer with name \(([^)]*)\)", log))
    branch_outputs = {"If_1.else_branch/else_out", "If_2.else_branch/else_out"}  # directly a branch output: onnxruntime copies it out
    assert used >= {t.name for t in s.tensors if not t.inline} - branch_outputs


def test_ir3_initializers_stay_inputs(tmp_path):
    gen = om.make_ir3(str(tmp_path))
    s, sess = _check_identical(gen.path, gen.feeds)
    g = s.graph().graph
    assert "W" in {i.name for i in g.input} and "C" not in {i.name for i in g.input}
    assert [i.name for i in sess.get_inputs()] == ["X"]


def test_backing_serves_arrays_no_file_backs(tmp_path) -> None:
    """Arrays in memory no regular file backs (as on a device-DAX pool) stay zero-copy
    when ``backing`` names the source bytes; without it they are embedded."""
    import onnxruntime as ort

    from pyaccel import onnxfile
    from pyaccel.ortsession import make_session, session_binding

    g = om.make_external_one_file(str(tmp_path))
    scan = onnxfile.scan(g.path)
    anon = {}
    for t in scan.tensors:
        a = np.empty(t.shape, dtype=t.np_dtype)  # anonymous memory, like a char-device mapping
        a[...] = om.array_of(t)
        a.flags.writeable = False
        anon[t.name] = a
    backing = {t.name: (t.range.path, t.range.offset) for t in scan.tensors if t.range is not None}

    def run(**kw):
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_prepacking", "1")
        s = make_session(scan.graph_bytes, anon, so, **kw)
        return s, s.run(None, g.feeds)

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_prepacking", "1")
    want = ort.InferenceSession(g.path, so).run(None, g.feeds)
    s1, out1 = run()
    s2, out2 = run(backing=backing)
    big = [t.name for t in scan.tensors if not t.inline]
    assert set(big) <= set(session_binding(s1).copied)
    assert not set(big) & set(session_binding(s2).copied)
    for got in (out1, out2):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
