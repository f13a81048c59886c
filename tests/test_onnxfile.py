"""Tests of pyaccel.onnxfile: locating weights, safe external data, bad input, no materialisation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models as om
from pyaccel import onnxfile
from pyaccel.errors import ExternalDataError, MalformedModelError, ModelError, UnsupportedModelError
from pyaccel.onnxfile import INLINE_LIMIT, STRIPPED_LOCATION, StaleSourceError, is_stripped, open_source, scan

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _vi(name, dtype=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _identity_model(tensors, sparse=()):
    """A model returning each initializer through Identity."""
    nodes = [helper.make_node("Identity", [t.name], [f"out_{t.name}"]) for t in tensors]
    outs = [_vi(f"out_{t.name}", t.data_type) for t in tensors]
    g = helper.make_graph(nodes, "g", [], outs, list(tensors))
    g.sparse_initializer.extend(sparse)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _save(m, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path


def _ext_tensor(name="W", n=300, location="w.bin", offset=0, length=None, **extra):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n])
    om._set_external(t, location, offset, length if length is not None else 4 * n, **extra)
    return t


def _ext_model(d, location="w.bin", write=True, n=300, **kw):
    """A model with one external tensor W at `location` (file written unless `write` is False)."""
    path = _save(_identity_model([_ext_tensor(location=location, n=n, **kw)]), os.path.join(d, "model.onnx"))
    if write:
        target = os.path.join(d, location)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        np.arange(n, dtype=np.float32).tofile(target)
    return path


@pytest.fixture(params=["openat2", "fallback"])
def resolver(request, monkeypatch):
    """Run a test with the kernel's openat2 and again with the O_NOFOLLOW component walk."""
    if request.param == "openat2":
        if not onnxfile._OPENAT2.available:
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(onnxfile._OPENAT2, "available", False)
    return request.param


# ---------------------------------------------------------------------------
# Locating weights
# ---------------------------------------------------------------------------


def test_embedded_raw_data_is_a_direct_range(tmp_path):
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    w1 = s.tensor("W1")
    assert w1.range is not None and w1.range.path == gen.path and w1.range.length == w1.nbytes == 64 * 48 * 4
    assert not w1.inline and w1.where == "graph/initializer W1" and w1.np_dtype == np.float32
    m = onnx.load(gen.path)
    want = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for t in s.tensors:
        assert np.array_equal(om.array_of(t), want[t.name]), t.name
    # the small int64 shape stays inline so that onnxruntime's shape inference can read it
    shape = s.tensor("shape")
    assert shape.inline and shape.nbytes <= INLINE_LIMIT
    assert [src.path for src in s.sources] == [gen.path]
    st = os.stat(gen.path)
    assert s.sources[0] == (gen.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def test_graph_bytes_hold_no_weight_bytes(tmp_path):
    gen = om.make_embedded(str(tmp_path))
    s = scan(gen.path)
    assert len(s.graph_bytes) < 1500 < os.path.getsize(gen.path)
    g = s.graph().graph
    stripped = {t.name for t in g.initializer if is_stripped(t)}
    assert stripped == {t.name for t in s.tensors if not t.inline} == {"W1", "W2t"}  # b1 (192 bytes) stays inline
    t = next(t for t in g.initializer if t.name == "W1")
    assert list(t.dims) == [64, 48] and t.data_type == TensorProto.FLOAT and not t.raw_data
    assert {e.key: e.value for e in t.external_data} == {"location": STRIPPED_LOCATION, "offset": "0", "length": str(64 * 48 * 4)}


@pytest.mark.parametrize("key", list(om.dtype_arrays()))
def test_every_dtype_raw_and_typed(tmp_path, key):
    arr, dtype = om.dtype_arrays()[key]
    path = str(tmp_path / "m.onnx")
    if dtype == TensorProto.FLOAT:  # float_data written bit for bit (the API would quiet the signalling NaN)
        with open(path, "wb") as f:
            f.write(om.append_initializers(_identity_model([om._raw(f"{key}_raw", arr, dtype)]), [om.float_data_tensor(f"{key}_typed", arr)]))
    else:
        _save(_identity_model([om._raw(f"{key}_raw", arr, dtype), om._typed(f"{key}_typed", arr, dtype)]), path)
    s = scan(path)
    for t in s.tensors:
        assert t.dtype == dtype and t.shape == arr.shape and t.nbytes == arr.nbytes
        assert t.np_dtype == arr.dtype
        got = om.array_of(t)
        assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes(), t.name  # bit-exact, NaN payloads included
    raw, typed = s.tensor(f"{key}_raw"), s.tensor(f"{key}_typed")
    assert raw.range is not None
    # packed float_data / double_data are the memory layout; varint fields are not
    assert (typed.range is not None) == (dtype in (TensorProto.FLOAT, TensorProto.DOUBLE))


def test_packed_float_data_range_is_the_memory_layout(tmp_path):
    arr = np.array([1.5, -0.0, np.inf, 3e-42] * 100, np.float32)
    t = helper.make_tensor("F", TensorProto.FLOAT, arr.shape, arr.tolist(), raw=False)
    path = _save(_identity_model([t]), str(tmp_path / "m.onnx"))
    ref = scan(path).tensor("F")
    with open(path, "rb") as f:
        f.seek(ref.range.offset)
        assert f.read(ref.range.length) == arr.astype("<f4").tobytes()


def test_unpacked_float_data_converts_bit_exactly(tmp_path):
    arr = om.dtype_arrays()["fp32"][0]
    path = str(tmp_path / "m.onnx")
    with open(path, "wb") as f:
        f.write(om.append_initializers(_identity_model([]), [om.float_data_tensor("U", arr, packed=False)]))
    ref = scan(path).tensor("U")
    assert ref.range is None
    assert ref.convert().tobytes() == arr.tobytes()  # including the signalling NaN


def test_int4_converts_and_has_no_direct_range(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arr = (np.arange(3001) % 16 - 8).astype(ml_dtypes.int4)
    path = _save(_identity_model([numpy_helper.from_array(arr, "Q")]), str(tmp_path / "m.onnx"))
    ref = scan(path).tensor("Q")
    assert ref.range is None and ref.np_dtype == arr.dtype and ref.nbytes == 3001
    assert np.array_equal(ref.convert().astype(np.int8), arr.astype(np.int8))


def test_constants_every_kind(tmp_path):
    gen = om.make_constants(str(tmp_path))
    s = scan(gen.path)
    by = {t.name: t for t in s.tensors}
    assert set(by) == {"c_big", "c_f16", "c_floats", "c_ints", "c_sparse"}
    assert by["c_big"].where == "graph/Constant_0/value" and by["c_big"].range is not None
    assert by["c_floats"].where == "graph/Constant_2/value_floats" and by["c_floats"].shape == (600,)
    assert by["c_ints"].dtype == TensorProto.INT64 and by["c_ints"].range is None
    assert by["c_sparse"].shape == (24, 24) and by["c_sparse"].range is None
    m = onnx.load(gen.path)
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}
    for name, t in by.items():
        attr = consts[name].attribute[0]
        if attr.name == "value":
            want = numpy_helper.to_array(attr.t)
        elif attr.name == "value_floats":
            want = np.array(attr.floats, np.float32)
        elif attr.name == "value_ints":
            want = np.array(attr.ints, np.int64)
        else:
            sp = attr.sparse_tensor
            want = np.zeros(t.shape, np.float32)
            want.reshape(-1)[numpy_helper.to_array(sp.indices)] = numpy_helper.to_array(sp.values)
        assert np.array_equal(om.array_of(t), want), name
    # the small ones stay as Constant nodes, like in the file
    kept = {e.where for e in s.embedded}
    assert "graph/Constant_3/value_float" in kept and "graph/Constant_6/value_strings" in kept
    g = s.graph().graph
    assert not any(n.op_type == "Constant" and n.output[0] in by for n in g.node)
    assert {t.name for t in g.initializer} == set(by)


def test_subgraph_weights_stay_in_their_graph_with_unique_names(tmp_path):
    gen = om.make_subgraphs(str(tmp_path))
    s = scan(gen.path)
    names = [t.name for t in s.tensors]
    assert len(names) == len(set(names)) == 12
    # "W" of the then-branch shadows the main graph's W: renamed after where it is
    w_then = s.tensor("If_1.then_branch/W")
    assert w_then.where == "graph/If_1.then_branch/initializer W"
    # names defined once in the model keep their names
    assert s.tensor("IW").where == "graph/Loop_3.body/If_3.then_branch/initializer IW"
    assert s.tensor("LC").where == "graph/Loop_3.body/Constant_1/value"
    assert s.tensor("SW").range is not None  # packed float_data
    g = s.graph().graph
    assert [t.name for t in g.initializer] == ["W"]
    then_g = next(a.g for a in g.node[1].attribute if a.name == "then_branch")
    assert {t.name for t in then_g.initializer} == {"If_1.then_branch/W", "If_1.then_branch/then_c"}
    assert "If_1.then_branch/W" in then_g.node[0].input and not any(n.op_type == "Constant" for n in then_g.node)
    # the else branch returned its Constant directly: an Identity keeps the output's name
    else_g = next(a.g for a in g.node[1].attribute if a.name == "else_branch")
    assert [(n.op_type, list(n.input), list(n.output)) for n in else_g.node] == [("Identity", ["If_1.else_branch/else_out"], ["else_out"])]
    assert [e.where for e in s.embedded] == ["graph/Loop_3.body/Constant_4/value"]  # the tiny one stays a Constant
    m = onnx.load(gen.path)
    assert np.array_equal(om.array_of(s.tensor("W")), numpy_helper.to_array(m.graph.initializer[0]))
    for t in s.tensors:
        assert t.name in {i.name for i in onnxfile._all_initializers(g)}


def test_shadowing_inner_graph_keeps_its_own_value(tmp_path):
    """A nested subgraph that defines the hoisted name itself is not redirected."""
    big = np.arange(400, dtype=np.float32)
    inner = helper.make_graph(
        [helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(np.ones(3, np.float32), "")), helper.make_node("Identity", ["K"], ["inner_out"])],
        "inner", [], [_vi("inner_out")],
    )
    outer_then = helper.make_graph(
        [helper.make_node("Add", ["K", "K"], ["k2"]), helper.make_node("If", ["flag"], ["io"], then_branch=inner, else_branch=inner), helper.make_node("Identity", ["k2"], ["then_out"])],
        "then", [], [_vi("then_out")], [numpy_helper.from_array(big, "K")],
    )
    g = helper.make_graph([helper.make_node("If", ["flag"], ["Y"], then_branch=outer_then, else_branch=outer_then)], "g", [_vi("flag", TensorProto.BOOL, [])], [_vi("Y")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s = scan(_save(m, str(tmp_path / "m.onnx")))
    gg = s.graph().graph
    then_g = gg.node[0].attribute[0].g if gg.node[0].attribute[0].name == "then_branch" else gg.node[0].attribute[1].g
    assert list(then_g.node[0].input) == ["If_0.then_branch/K", "If_0.then_branch/K"]
    assert [t.name for t in then_g.initializer] == ["If_0.then_branch/K"]
    inner_g = then_g.node[1].attribute[0].g
    assert list(inner_g.node[1].input) == ["K"]  # its own small Constant K


def test_sparse_initializers_densify(tmp_path):
    gen = om.make_sparse(str(tmp_path))
    s = scan(gen.path)
    m = onnx.load(gen.path)
    for sp in m.graph.sparse_initializer:
        t = s.tensor(sp.values.name)
        assert t.where == f"graph/sparse_initializer {sp.values.name}" and t.shape == (32, 16) and t.range is None
        dense = np.zeros(512, np.float32)
        idx = numpy_helper.to_array(sp.indices)
        lin = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), (32, 16))
        dense[lin] = numpy_helper.to_array(sp.values)
        assert np.array_equal(t.convert(), dense.reshape(32, 16))
    assert not s.graph().graph.sparse_initializer


def test_function_constants_stay_embedded(tmp_path):
    gen = om.make_function(str(tmp_path))
    s = scan(gen.path)
    assert [t.name for t in s.tensors] == ["W"]
    assert [e.where for e in s.embedded] == ["function local.AddConst/Constant_0/value"]
    assert s.embedded[0].nbytes == 40 * 40 * 4


def test_external_one_and_many_files(tmp_path):
    one = om.make_external_one_file(str(tmp_path / "one"))
    s = scan(one.path)
    ext = os.path.join(str(tmp_path / "one"), "ext1.weights")
    assert {t.range.path for t in s.tensors if not t.inline} == {ext}
    assert [src.path for src in s.sources] == [one.path, ext]
    many = om.make_external_many_files(str(tmp_path / "many"))
    s = scan(many.path)
    d = str(tmp_path / "many")
    assert s.tensor("W1").range == (os.path.join(d, "data/W1.bin"), 0, 64 * 48 * 4)
    assert s.tensor("W1").checksum == "0" * 40
    assert s.tensor("b1").range.offset == 3 and s.tensor("W2t").range.path == os.path.join(d, "pair.bin")
    assert len(s.sources) == 3
    m = onnx.load(many.path)  # onnx resolves the same bytes
    for t in m.graph.initializer:
        assert np.array_equal(om.array_of(s.tensor(t.name)), numpy_helper.to_array(t)), t.name


def test_small_external_tensor_is_read_inline(tmp_path):
    path = _ext_model(str(tmp_path), n=4)
    s = scan(path)
    t = s.tensor("W")
    assert t.inline and t.range is not None
    init = s.graph().graph.initializer[0]
    assert not is_stripped(init) and numpy_helper.to_array(init).tolist() == [0, 1, 2, 3]


def test_convert_refuses_a_changed_file(tmp_path):
    gen = om.make_constants(str(tmp_path))
    s = scan(gen.path)
    with open(gen.path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(StaleSourceError, match="changed since it was scanned"):
        s.tensor("c_ints").convert()


def test_open_source_checks_identity(tmp_path):
    path = _ext_model(str(tmp_path))
    s = scan(path)
    ext = s.tensor("W").range.path
    fd = open_source(s, ext)
    try:
        assert os.pread(fd, 8, 4) == np.arange(1, 3, dtype=np.float32).tobytes()
    finally:
        os.close(fd)
    os.replace(ext, ext + ".old")
    np.zeros(300, np.float32).tofile(ext)
    with pytest.raises(StaleSourceError, match="w.bin"):
        open_source(s, ext)


# ---------------------------------------------------------------------------
# Bad input: malformed files
# ---------------------------------------------------------------------------


def _model_bytes(tmp_path):
    with open(om.make_embedded(str(tmp_path / "src")).path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("cut", [1, 5, 40, 200, 5000, -1])
def test_truncated_file(tmp_path, cut):
    data = _model_bytes(tmp_path)
    p = tmp_path / "t.onnx"
    p.write_bytes(data[:cut] if cut > 0 else data[:-1])
    with pytest.raises(MalformedModelError, match=r"truncated|malformed protobuf|no graph"):
        scan(str(p))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x3a" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "varint exceeds 64 bits"),
        (b"\x38\x05", "ModelProto.graph has wire type varint"),
        (b"\x3b\x00", "wire type start-group"),
        (b"\x3a\x10\x00", "truncated"),
        (b"\x00\x01", "field number 0"),
        (b"\x3a\x04\x2a\x10\x08\x01" + b"\x00" * 20, "past the end of its message"),
    ],
)
def test_malformed_protobuf(tmp_path, payload, message):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x08" + payload)  # ir_version 8, then the bad part
    with pytest.raises(MalformedModelError, match=message) as info:
        scan(str(p))
    assert info.value.path == str(p)


def test_not_a_model(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(MalformedModelError, match="empty file"):
        scan(str(p))
    p.write_bytes(b"\x08\x08")
    with pytest.raises(MalformedModelError, match="no graph"):
        scan(str(p))
    with pytest.raises(MalformedModelError, match="cannot open the model"):
        scan(str(tmp_path / "missing.onnx"))
    with pytest.raises(MalformedModelError, match="not a regular file"):
        scan(str(tmp_path))


def _one(tmp_path, t):
    return _save(_identity_model([t]), str(tmp_path / "m.onnx"))


def test_raw_size_must_match_dtype_and_shape(tmp_path):
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10, 10], raw_data=b"\0" * 396)
    with pytest.raises(MalformedModelError, match=r"raw_data holds 396 bytes but FLOAT x \(10, 10\) needs 400") as info:
        scan(_one(tmp_path, t))
    assert info.value.tensor == "W"


def test_typed_count_must_match_shape(tmp_path):
    t = helper.make_tensor("W", TensorProto.INT64, [5], [1, 2, 3, 4, 5])
    t.dims[0] = 6
    with pytest.raises(MalformedModelError, match=r"int64_data holds 5 values but INT64 x \(6,\) needs 6"):
        scan(_one(tmp_path, t))


def test_negative_dims(tmp_path):
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=b"")
    with pytest.raises(MalformedModelError, match="negative dimension -1"):
        scan(_one(tmp_path, t))


def test_data_in_wrong_or_two_fields(tmp_path):
    t = helper.make_tensor("W", TensorProto.INT64, [2], [1, 2])
    t.float_data.extend([1.0, 2.0])
    with pytest.raises(MalformedModelError, match="several fields"):
        scan(_one(tmp_path, t))
    t = TensorProto(name="W", data_type=TensorProto.INT64, dims=[2], float_data=[1.0, 2.0])
    with pytest.raises(MalformedModelError, match="INT64 data is in float_data; it belongs in int64_data"):
        scan(_one(tmp_path, t))
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3])
    with pytest.raises(MalformedModelError, match="has no data for its 3 elements"):
        scan(_one(tmp_path, t))


def test_unknown_and_undefined_dtypes(tmp_path):
    t = TensorProto(name="W", data_type=0, dims=[1], raw_data=b"\0")
    with pytest.raises(MalformedModelError, match="UNDEFINED"):
        scan(_one(tmp_path, t))
    t = TensorProto(name="W", data_type=99, dims=[1], raw_data=b"\0")
    with pytest.raises(UnsupportedModelError, match="unknown data type 99"):
        scan(_one(tmp_path, t))


def test_duplicate_initializer_names(tmp_path):
    a = numpy_helper.from_array(np.zeros(400, np.float32), "W")
    m = _identity_model([a])
    m.graph.initializer.append(a)
    with pytest.raises(MalformedModelError, match="duplicate initializer name"):
        scan(_save(m, str(tmp_path / "m.onnx")))


def test_all_errors_are_model_errors_on_random_corruption(tmp_path):
    """Flip bytes of a valid model: every outcome is a clean scan or a pyaccel ModelError."""
    with open(om.make_subgraphs(str(tmp_path / "src")).path, "rb") as f:
        data = bytearray(f.read())
    rng = np.random.default_rng(0)
    p = tmp_path / "c.onnx"
    # corrupt only the structure (the first bytes of each region), not just weight payloads
    positions = np.concatenate([rng.integers(0, 200, 60), rng.integers(0, len(data), 60)])
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(bad))
        try:
            scan(str(p))
        except ModelError:
            pass


# ---------------------------------------------------------------------------
# Bad input: external data
# ---------------------------------------------------------------------------


def test_missing_external_file(tmp_path, resolver):
    path = _ext_model(str(tmp_path), write=False)
    with pytest.raises(ExternalDataError, match="external data file 'w.bin' does not exist") as info:
        scan(path)
    assert info.value.path == path and info.value.tensor == "W"


@pytest.mark.parametrize("location, message", [
    ("../w.bin", "contains '..'"),
    ("sub/../../w.bin", "contains '..'"),
    ("/etc/passwd", "is an absolute path"),
    ("", "empty location"),
    (".", "names the model's directory itself"),
])
def test_traversal_paths(tmp_path, location, message, resolver):
    path = _save(_identity_model([_ext_tensor(location=location)]), str(tmp_path / "m" / "model.onnx"))
    np.zeros(300, np.float32).tofile(str(tmp_path / "w.bin"))
    with pytest.raises(ExternalDataError, match=message):
        scan(path)


def test_symlink_as_last_component(tmp_path, resolver):
    path = _ext_model(str(tmp_path), location="real.bin")
    os.symlink("real.bin", str(tmp_path / "link.bin"))
    _save(_identity_model([_ext_tensor(location="link.bin")]), path)
    with pytest.raises(ExternalDataError, match=r"'link.bin' goes through a symbolic link \(the file itself\)"):
        scan(path)


def test_symlinked_parent_escaping(tmp_path, resolver):
    outside = tmp_path / "outside"
    outside.mkdir()
    np.zeros(300, np.float32).tofile(str(outside / "w.bin"))
    d = tmp_path / "m"
    d.mkdir()
    os.symlink(str(outside), str(d / "sub"))
    path = _save(_identity_model([_ext_tensor(location="sub/w.bin")]), str(d / "model.onnx"))
    with pytest.raises(ExternalDataError, match=r"goes through a symbolic link \(its component 'sub'\)"):
        scan(path)


def test_symlinked_parent_inside_is_refused_too(tmp_path, resolver):
    """Like onnx, any symlink in the location is refused, even one that stays inside."""
    path = _ext_model(str(tmp_path), location="real/w.bin")
    os.symlink("real", str(tmp_path / "alias"))
    _save(_identity_model([_ext_tensor(location="alias/w.bin")]), path)
    with pytest.raises(ExternalDataError, match="symbolic link"):
        scan(path)


def test_hard_link_refused(tmp_path, resolver):
    path = _ext_model(str(tmp_path))
    os.link(str(tmp_path / "w.bin"), str(tmp_path / "other.bin"))
    with pytest.raises(ExternalDataError, match="has 2 hard links"):
        scan(path)


def test_not_a_regular_file(tmp_path, resolver):
    path = _ext_model(str(tmp_path), location="dir/w.bin", write=False)
    (tmp_path / "dir" / "w.bin").mkdir(parents=True)
    with pytest.raises(ExternalDataError, match="not a regular file"):
        scan(path)


def test_fifo_does_not_hang(tmp_path, resolver):
    path = _ext_model(str(tmp_path), write=False)
    os.mkfifo(str(tmp_path / "w.bin"))
    with pytest.raises(ExternalDataError, match="not a regular file"):
        scan(path)


@pytest.mark.parametrize("kw, message", [
    (dict(offset=8), r"offset 8 \+ length 1200 is past the end of the file \(1200 bytes\)"),
    (dict(offset=5000), r"offset 5000 is past the end of the file"),
    (dict(length=1196), r"length 1196 does not match dtype x shape = 1200 bytes"),
])
def test_range_checks(tmp_path, kw, message):
    path = _ext_model(str(tmp_path), **kw)
    with pytest.raises(ExternalDataError, match=message) as info:
        scan(path)
    assert info.value.path == str(tmp_path / "w.bin")


def test_unknown_duplicate_and_bad_keys(tmp_path):
    path = _ext_model(str(tmp_path), evil="1")
    with pytest.raises(ExternalDataError, match="unknown external data key 'evil'"):
        scan(path)
    t = _ext_tensor()
    e = t.external_data.add()
    e.key, e.value = "offset", "0"
    _save(_identity_model([t]), path)
    with pytest.raises(ExternalDataError, match="key 'offset' given twice"):
        scan(path)
    _save(_identity_model([_ext_tensor(offset="-4")]), path)
    with pytest.raises(ExternalDataError, match="offset '-4' is not a non-negative integer"):
        scan(path)
    _save(_identity_model([_ext_tensor(length="0x10")]), path)
    with pytest.raises(ExternalDataError, match="length '0x10' is not a non-negative integer"):
        scan(path)


def test_external_and_embedded_data_together(tmp_path):
    t = _ext_tensor()
    t.raw_data = b"\0" * 1200
    path = _save(_identity_model([t]), str(tmp_path / "m.onnx"))
    np.zeros(300, np.float32).tofile(str(tmp_path / "w.bin"))
    with pytest.raises(MalformedModelError, match="has external data and embedded data"):
        scan(path)


# ---------------------------------------------------------------------------
# Scanning does not materialise the model
# ---------------------------------------------------------------------------

_RSS_PROBE = textwrap.dedent(
    """
    import resource, sys, time
    sys.path[:0] = {paths!r}
    from pyaccel.onnxfile import scan
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = scan({model!r})
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, s.nbytes, len(s.tensors), len(s.graph_bytes), dt)
    """
)


@pytest.mark.slow
def test_scan_does_not_materialise_a_large_model(tmp_path):
    """Peak RSS of scanning a 512 MiB embedded model grows by far less than its size."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    d = os.path.join(root, f"pyaccel-test-rss-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    try:
        gen = om.make_matmul_chain(os.path.join(d, "big.onnx"), layers=8, dim=4096, external=None)
        size = os.path.getsize(gen.path)
        assert size > 512 << 20
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE.format(paths=[here], model=gen.path)], capture_output=True, text=True, check=True, timeout=300
        ).stdout.split()
        growth, nbytes, count, graph_len = (int(x) for x in out[:4])
        assert nbytes == 8 * 4096 * 4096 * 4 and count == 8 and graph_len < 4096
        assert growth < 32 << 20, f"scan grew peak RSS by {growth >> 20} MiB for a {size >> 20} MiB model"
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def test_file_shrinking_during_scan_is_an_error_not_sigbus(tmp_path) -> None:
    """The scan reads with pread: a file cut short by another process mid-scan raises."""
    from pyaccel.onnxfile import _PreadBuf

    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(range(256)) * 400)  # 102400 bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = _PreadBuf(fd, 102400, str(path))
        assert buf[70000] == 70000 % 256
        os.truncate(path, 30000)  # "another process" truncates it
        with pytest.raises(MalformedModelError, match="truncated by another process"):
            buf[100]  # a block not read before
        with pytest.raises(MalformedModelError, match="truncated by another process"):
            buf[50000:200000]
    finally:
        os.close(fd)
