"""Generators of the ONNX models that pyaccel's loader is tested and benchmarked on.

A plain module (no pytest): every ``make_*`` function writes one model into a
directory and returns a :class:`Generated` (its path and the inputs to run it
with).  :data:`CORRECTNESS_MODELS` lists the small ones that the bit-identity
tests run; :func:`write_streamed_model` writes models of any size without
holding their weights in memory (for the >2 GiB and RSS tests and the
benchmark).  :func:`array_of` gives the array of a scanned tensor the way a
pool would (a read-only view of the file, or ``convert()``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - onnx depends on it
    ml_dtypes = None

__all__ = [
    "CORRECTNESS_MODELS",
    "Generated",
    "StreamedTensor",
    "array_of",
    "backend_models",
    "write_streamed_model",
]

OPSET = 17
IR = 8


@dataclass
class Generated:
    """A model written by a generator.

    Attributes
    ----------
    path : str
        The ``.onnx`` file.
    feeds : dict of str to numpy.ndarray
        Inputs to run it with.
    files : list of str
        Every file written (the model and its external data).
    """

    path: str
    feeds: dict[str, np.ndarray]
    files: list[str] = field(default_factory=list)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def _vi(name: str, dtype: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(graph: onnx.GraphProto, opset: int = OPSET, ir: int = IR, **kw) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    m.ir_version = ir
    return m


def _save(m: onnx.ModelProto, d: str, name: str, feeds: dict[str, np.ndarray]) -> Generated:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name)
    onnx.save(m, path)
    return Generated(path, feeds, [path])


def array_of(t) -> np.ndarray:
    """The final array of a scanned ``TensorRef``: a read-only memmap of its byte range, or ``convert()``."""
    if t.range is not None:
        if t.nbytes == 0:
            return np.zeros(t.shape, dtype=t.np_dtype)
        return np.memmap(t.range.path, dtype=t.np_dtype, mode="r", offset=t.range.offset, shape=t.shape)
    return t.convert()


# ---------------------------------------------------------------------------
# Small models for the bit-identity tests
# ---------------------------------------------------------------------------


def _mlp_graph(rng: np.random.Generator, d_in: int = 64, d_h: int = 48) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """MatMul/Add/Relu, a Transpose of a weight that onnxruntime folds, and a Reshape whose shape it must read."""
    inits = [
        numpy_helper.from_array(_f32(rng, d_in, d_h), "W1"),
        numpy_helper.from_array(_f32(rng, d_h), "b1"),
        numpy_helper.from_array(_f32(rng, 16, d_h), "W2t"),  # used as Transpose(W2t): folded by onnxruntime
        numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Transpose", ["W2t"], ["W2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Reshape", ["h3", "shape"], ["Y"]),
    ]
    g = helper.make_graph(nodes, "mlp", [_vi("X", TensorProto.FLOAT, [4, d_in])], [_vi("Y", TensorProto.FLOAT, None)], inits)
    return g, {"X": _f32(rng, 4, d_in)}


def make_embedded(d: str) -> Generated:
    """Weights embedded as ``raw_data``."""
    g, feeds = _mlp_graph(_rng(1))
    return _save(_model(g), d, "embedded.onnx", feeds)


def make_external_one_file(d: str) -> Generated:
    """All tensors over 1 KiB in one external file (onnx's own writer)."""
    g, feeds = _mlp_graph(_rng(2))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "ext1.onnx")
    onnx.save(_model(g), path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext1.weights", size_threshold=1024)
    return Generated(path, feeds, [path, os.path.join(d, "ext1.weights")])


def _set_external(t: TensorProto, location: str, offset: int, length: int | None = None, **extra: str) -> None:
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", location), ("offset", str(offset))]
    if length is not None:
        entries.append(("length", str(length)))
    entries += list(extra.items())
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    t.ClearField("raw_data")


def make_external_many_files(d: str) -> Generated:
    """External data in several files, in a subdirectory, at unaligned offsets, one with a checksum and no length."""
    rng = _rng(3)
    g, feeds = _mlp_graph(rng)
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    files = []
    # W1 alone in data/W1.bin (no length key: to the end of the file)
    w1 = g.initializer[0]
    p = os.path.join(d, "data", "W1.bin")
    with open(p, "wb") as f:
        f.write(w1.raw_data)
    _set_external(w1, "data/W1.bin", 0, None, checksum="0" * 40)
    files.append(p)
    # b1 and W2t packed together at odd offsets in ./pair.bin
    p = os.path.join(d, "pair.bin")
    with open(p, "wb") as f:
        f.write(b"\x01\x02\x03")
        b1, w2t = g.initializer[1], g.initializer[2]
        raw_b1, raw_w2 = b1.raw_data, w2t.raw_data
        f.write(raw_b1)
        f.write(b"\x00" * 5)
        f.write(raw_w2)
    _set_external(b1, "pair.bin", 3, len(raw_b1))
    _set_external(w2t, "./pair.bin", 3 + len(raw_b1) + 5, len(raw_w2))
    files.append(p)
    gen = _save(_model(g), d, "extmany.onnx", feeds)
    gen.files += files
    return gen


def make_constants(d: str) -> Generated:
    """Weights in ``Constant`` nodes: every ``value_*`` kind, large and small."""
    rng = _rng(4)
    big = _f32(rng, 32, 24)
    f16 = rng.standard_normal((24, 40)).astype(np.float16)
    floats = _f32(rng, 600).tolist()
    ints = rng.integers(-(2**40), 2**40, size=300).tolist()
    dense = np.zeros((24, 24), np.float32)
    idx = rng.choice(24 * 24, size=50, replace=False)
    idx.sort()
    dense.reshape(-1)[idx] = _f32(rng, 50)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(dense.reshape(-1)[idx], "sp"), numpy_helper.from_array(idx.astype(np.int64), "sp_idx"), [24, 24]
    )
    nodes = [
        helper.make_node("Constant", [], ["c_big"], value=numpy_helper.from_array(big, "")),
        helper.make_node("Constant", [], ["c_f16"], value=helper.make_tensor("", TensorProto.FLOAT16, f16.shape, f16.view(np.uint16).reshape(-1).tolist())),
        helper.make_node("Constant", [], ["c_floats"], value_floats=floats),
        helper.make_node("Constant", [], ["c_float"], value_float=1.5),
        helper.make_node("Constant", [], ["c_ints"], value_ints=ints),
        helper.make_node("Constant", [], ["c_int"], value_int=-7),
        helper.make_node("Constant", [], ["c_strs"], value_strings=[b"alpha", b"beta", "γ".encode()]),
        helper.make_node("Constant", [], ["c_str"], value_string=b"scalar"),
        helper.make_node("Constant", [], ["c_sparse"], sparse_value=sparse),
        helper.make_node("Constant", [], ["c_small"], value=numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "")),
        helper.make_node("MatMul", ["X", "c_big"], ["m0"]),
        helper.make_node("MatMul", ["m0", "c_sparse"], ["m1"]),
        helper.make_node("Mul", ["m1", "c_float"], ["Y"]),
        helper.make_node("Cast", ["c_f16"], ["f16_as_f32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["c_ints", "c_int"], ["ints_out"]),
        helper.make_node("Identity", ["c_floats"], ["floats_out"]),
        helper.make_node("Identity", ["c_strs"], ["strs_out"]),
        helper.make_node("Identity", ["c_str"], ["str_out"]),
        helper.make_node("Identity", ["c_small"], ["small_out"]),
    ]
    outs = [
        _vi("Y", TensorProto.FLOAT, None),
        _vi("f16_as_f32", TensorProto.FLOAT, None),
        _vi("ints_out", TensorProto.INT64, None),
        _vi("floats_out", TensorProto.FLOAT, None),
        _vi("strs_out", TensorProto.STRING, None),
        _vi("str_out", TensorProto.STRING, None),
        _vi("small_out", TensorProto.FLOAT, None),
        _vi("c_f16", TensorProto.FLOAT16, None),
    ]
    g = helper.make_graph(nodes, "constants", [_vi("X", TensorProto.FLOAT, [3, 32])], outs)
    return _save(_model(g), d, "constants.onnx", {"X": _f32(rng, 3, 32)})


def _branch(name: str, init: np.ndarray, init_name: str, const: np.ndarray, use_outer: str) -> onnx.GraphProto:
    """A subgraph using its own initializer, its own large Constant, and an outer value."""
    nodes = [
        helper.make_node("Constant", [], [f"{name}_c"], value=numpy_helper.from_array(const, "")),
        helper.make_node("MatMul", [use_outer, init_name], [f"{name}_a"]),
        helper.make_node("Add", [f"{name}_a", f"{name}_c"], [f"{name}_out"]),
    ]
    return helper.make_graph(nodes, name, [], [_vi(f"{name}_out", TensorProto.FLOAT, None)], [numpy_helper.from_array(init, init_name)])


def make_subgraphs(d: str) -> Generated:
    """Weights in If, Loop and Scan bodies, nested, shadowing an outer name, and as a branch output."""
    rng = _rng(5)
    D = 300  # so that every per-branch vector (D floats) is over INLINE_LIMIT and gets hoisted
    W = _f32(rng, D, D)  # main-graph W; the then-branch has its own "W" (shadowing)
    then_g = _branch("then", _f32(rng, D, D), "W", _f32(rng, D), "X")
    # else: output is directly a large Constant (hoisting needs an Identity)
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["else_out"], value=numpy_helper.from_array(_f32(rng, 2, D), ""))],
        "else",
        [],
        [_vi("else_out", TensorProto.FLOAT, None)],
    )
    # Loop body: h = h @ LW + LC; inside, an If whose branches hold weights too (nesting)
    inner_then = _branch("inner_then", _f32(rng, D, D), "IW", _f32(rng, D), "h_in")
    inner_else = helper.make_graph([helper.make_node("Identity", ["h_in"], ["inner_else_out"])], "inner_else", [], [_vi("inner_else_out", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "LW"], ["lm"]),
            helper.make_node("Constant", [], ["LC"], value=numpy_helper.from_array(_f32(rng, D), "")),
            helper.make_node("Add", ["lm", "LC"], ["la"]),
            helper.make_node("If", ["flag"], ["li"], then_branch=inner_then, else_branch=inner_else),
            helper.make_node("Constant", [], ["tiny"], value=numpy_helper.from_array(np.array(0.5, np.float32), "")),
            helper.make_node("Add", ["la", "li"], ["h_sum"]),
            helper.make_node("Mul", ["h_sum", "tiny"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_vi("iter", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("h_in", TensorProto.FLOAT, None)],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("h_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_f32(rng, D, D), "LW")],
    )
    # Scan body: state += x_t @ SW (SW an initializer of the body, passed as float_data)
    sw = _f32(rng, D, D)
    scan_body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "SW"], ["sm"]), helper.make_node("Add", ["s_in", "sm"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])],
        "scan_body",
        [_vi("s_in", TensorProto.FLOAT, [D]), _vi("x_t", TensorProto.FLOAT, [D])],
        [_vi("s_out", TensorProto.FLOAT, [D]), _vi("y_t", TensorProto.FLOAT, [D])],
        [helper.make_tensor("SW", TensorProto.FLOAT, sw.shape, sw.reshape(-1).tolist())],
    )
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["xw"]),
        helper.make_node("If", ["flag"], ["if_out"], then_branch=then_g, else_branch=else_g),
        helper.make_node("If", ["notflag"], ["if2_out"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trip", "", "xw"], ["loop_out"], body=body),
        helper.make_node("Scan", ["s0", "X"], ["scan_state", "scan_ys"], body=scan_body, num_scan_inputs=1),
    ]
    g = helper.make_graph(
        nodes,
        "subgraphs",
        [_vi("X", TensorProto.FLOAT, [2, D]), _vi("flag", TensorProto.BOOL, []), _vi("notflag", TensorProto.BOOL, []), _vi("trip", TensorProto.INT64, []), _vi("s0", TensorProto.FLOAT, [D])],
        [_vi("if_out", TensorProto.FLOAT, None), _vi("if2_out", TensorProto.FLOAT, None), _vi("loop_out", TensorProto.FLOAT, None), _vi("scan_state", TensorProto.FLOAT, None), _vi("scan_ys", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W")],
    )
    feeds = {
        "X": _f32(rng, 2, D),
        "flag": np.array(True),
        "notflag": np.array(False),
        "trip": np.array(3, dtype=np.int64),
        "s0": _f32(rng, D),
    }
    return _save(_model(g), d, "subgraphs.onnx", feeds)


def _typed(name: str, arr: np.ndarray, dtype: int) -> TensorProto:
    """A tensor in its typed field (float_data, int32_data, int64_data ...), not raw_data."""
    if dtype in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        vals = arr.view(np.uint16).reshape(-1).astype(np.int32).tolist()
        t = TensorProto(name=name, data_type=dtype, dims=arr.shape)
        t.int32_data.extend(vals)
        return t
    return helper.make_tensor(name, dtype, arr.shape, arr.reshape(-1).tolist(), raw=False)


def _raw(name: str, arr: np.ndarray, dtype: int) -> TensorProto:
    return TensorProto(name=name, data_type=dtype, dims=arr.shape, raw_data=np.ascontiguousarray(arr).tobytes())


def float_data_tensor(name: str, arr: np.ndarray, packed: bool = True) -> bytes:
    """A serialized float32 ``TensorProto`` with its values in ``float_data``, bit for bit.

    Built at the wire level: going through the protobuf API would turn each
    value into a Python float (quieting signalling NaNs), and protobuf always
    re-serializes ``float_data`` packed, so the unpacked form (one fixed32
    field per value, which parsers must accept) only exists written by hand.
    Add it to a model with :func:`append_initializers`.
    """
    body = bytearray()
    body += b"\x08" + _varint(arr.shape[0])  # dims
    body += b"\x10" + _varint(TensorProto.FLOAT)  # data_type
    data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if packed:
        body += b"\x22" + _varint(len(data)) + data  # field 4, length-delimited
    else:
        for i in range(0, len(data), 4):
            body += b"\x25" + data[i : i + 4]  # field 4, fixed32
    body += b"\x42" + _varint(len(name)) + name.encode()
    return bytes(body)


def append_initializers(m: onnx.ModelProto, tensors: Sequence[bytes]) -> bytes:
    """Serialize `m` with extra ``GraphProto.initializer`` fields given as raw bytes."""
    g = m.graph.SerializeToString() + b"".join(b"\x2a" + _varint(len(t)) + t for t in tensors)
    rest = onnx.ModelProto()
    rest.CopyFrom(m)
    rest.ClearField("graph")
    return rest.SerializeToString() + b"\x3a" + _varint(len(g)) + g


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def dtype_arrays(rng: np.random.Generator | None = None) -> dict[str, tuple[np.ndarray, int]]:
    """One array per tested dtype, each large enough (> 1 KiB) to be stripped."""
    rng = rng or _rng(6)
    n = 1100
    f32 = _f32(rng, n)
    bits = f32.view(np.uint32).copy()
    bits[:4] = [0x7FA00001, 0xFFC12345, 0x7F800000, 0x80000000]  # signalling NaN, NaN payload, inf, -0
    out = {
        "fp32": (bits.view(np.float32), TensorProto.FLOAT),
        "fp16": (rng.standard_normal(n).astype(np.float16), TensorProto.FLOAT16),
        "int8": (rng.integers(-128, 128, n).astype(np.int8), TensorProto.INT8),
        "uint8": (rng.integers(0, 256, n).astype(np.uint8), TensorProto.UINT8),
        "int64": (rng.integers(-(2**62), 2**62, n).astype(np.int64), TensorProto.INT64),
        "bool": (rng.integers(0, 2, 2 * n).astype(bool), TensorProto.BOOL),
        "fp64": (rng.standard_normal(n), TensorProto.DOUBLE),
        "int32": (rng.integers(-(2**31), 2**31, n).astype(np.int32), TensorProto.INT32),
    }
    if ml_dtypes is not None:
        out["bf16"] = (rng.standard_normal(n).astype(ml_dtypes.bfloat16), TensorProto.BFLOAT16)
    return out


def make_dtypes(d: str) -> Generated:
    """fp32, fp16, bf16, int8, uint8, int64, bool (and fp64, int32) tensors, raw and typed, each returned by Identity."""
    arrays = dtype_arrays()
    inits = []
    nodes = []
    outs = []
    for key, (arr, dtype) in arrays.items():
        for form in ("raw", "typed"):
            name = f"{key}_{form}"
            inits.append(_raw(name, arr, dtype) if form == "raw" else _typed(name, arr, dtype))
            if dtype == TensorProto.BFLOAT16:  # onnxruntime's Python API cannot return bfloat16
                nodes.append(helper.make_node("Cast", [name], [f"out_{name}"], to=TensorProto.FLOAT))
                outs.append(_vi(f"out_{name}", TensorProto.FLOAT, None))
            else:
                nodes.append(helper.make_node("Identity", [name], [f"out_{name}"]))
                outs.append(_vi(f"out_{name}", dtype, None))
    extra = [float_data_tensor("fp32_typed", arrays["fp32"][0]), float_data_tensor("fp32_unpacked", arrays["fp32"][0], packed=False)]
    inits = [t for t in inits if t.name != "fp32_typed"]
    nodes.append(helper.make_node("Identity", ["fp32_unpacked"], ["out_fp32_unpacked"]))
    outs.append(_vi("out_fp32_unpacked", TensorProto.FLOAT, None))
    # A little arithmetic on some of them, so kernels read the weights too.
    nodes += [
        helper.make_node("Add", ["x16", "fp16_typed"], ["sum16"]),
        helper.make_node("Add", ["x64", "int64_raw"], ["sum64"]),
        helper.make_node("Cast", ["uint8_typed"], ["u8_as_f"], to=TensorProto.FLOAT),
        helper.make_node("Not", ["bool_typed"], ["not_bool"]),
    ]
    outs += [_vi("sum16", TensorProto.FLOAT16, None), _vi("sum64", TensorProto.INT64, None), _vi("u8_as_f", TensorProto.FLOAT, None), _vi("not_bool", TensorProto.BOOL, None)]
    g = helper.make_graph(nodes, "dtypes", [_vi("x16", TensorProto.FLOAT16, [1100]), _vi("x64", TensorProto.INT64, [1100])], outs, inits)
    rng = _rng(7)
    feeds = {"x16": rng.standard_normal(1100).astype(np.float16), "x64": rng.integers(-1000, 1000, 1100).astype(np.int64)}
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "dtypes.onnx")
    with open(path, "wb") as f:
        f.write(append_initializers(_model(g), extra))
    return Generated(path, feeds, [path])


def make_sparse(d: str) -> Generated:
    """Sparse initializers, with linear and with coordinate indices."""
    rng = _rng(8)
    dense1 = np.zeros((32, 16), np.float32)
    idx1 = np.sort(rng.choice(32 * 16, 60, replace=False)).astype(np.int64)
    dense1.reshape(-1)[idx1] = _f32(rng, 60)
    coords = np.stack(np.unravel_index(idx1[:40], (32, 16)), axis=1).astype(np.int64)
    dense2 = np.zeros((32, 16), np.float32)
    vals2 = _f32(rng, 40)
    dense2[coords[:, 0], coords[:, 1]] = vals2
    sp1 = helper.make_sparse_tensor(numpy_helper.from_array(dense1.reshape(-1)[idx1], "S1"), numpy_helper.from_array(idx1, "S1_idx"), [32, 16])
    sp2 = helper.make_sparse_tensor(numpy_helper.from_array(vals2, "S2"), numpy_helper.from_array(coords, "S2_idx"), [32, 16])
    g = helper.make_graph(
        [helper.make_node("MatMul", ["X", "S1"], ["a"]), helper.make_node("MatMul", ["X", "S2"], ["b"]), helper.make_node("Add", ["a", "b"], ["Y"])],
        "sparse",
        [_vi("X", TensorProto.FLOAT, [2, 32])],
        [_vi("Y", TensorProto.FLOAT, None)],
    )
    g.sparse_initializer.extend([sp1, sp2])
    return _save(_model(g), d, "sparse.onnx", {"X": _f32(rng, 2, 32)})


def make_ir3(d: str) -> Generated:
    """IR version 3: every initializer is also a graph input; plus a Constant node."""
    rng = _rng(9)
    W = _f32(rng, 40, 30)
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["a"]),
            helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(_f32(rng, 30, 30), "")),
            helper.make_node("MatMul", ["a", "C"], ["Y"]),
        ],
        "ir3",
        [_vi("X", TensorProto.FLOAT, [2, 40]), _vi("W", TensorProto.FLOAT, [40, 30])],
        [_vi("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W")],
    )
    return _save(_model(g, opset=8, ir=3), d, "ir3.onnx", {"X": _f32(rng, 2, 40)})


def make_conv_bn(d: str) -> Generated:
    """Conv + BatchNormalization: onnxruntime fuses them and so reads the weights while it optimizes."""
    rng = _rng(10)
    inits = [
        numpy_helper.from_array(_f32(rng, 16, 3, 3, 3), "conv_w"),
        numpy_helper.from_array(_f32(rng, 16), "conv_b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_scale"),
        numpy_helper.from_array(_f32(rng, 16), "bn_bias"),
        numpy_helper.from_array(_f32(rng, 16), "bn_mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_var"),
    ]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["X", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["Y"]),
        ],
        "convbn",
        [_vi("X", TensorProto.FLOAT, [1, 3, 12, 12])],
        [_vi("Y", TensorProto.FLOAT, None)],
        inits,
    )
    return _save(_model(g), d, "convbn.onnx", {"X": _f32(rng, 1, 3, 12, 12)})


def make_function(d: str) -> Generated:
    """A model-local function whose body holds a Constant (it stays embedded)."""
    rng = _rng(11)
    fn = helper.make_function(
        "local",
        "AddConst",
        ["x"],
        ["y"],
        [
            helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(_f32(rng, 40, 40), "")),
            helper.make_node("MatMul", ["x", "k"], ["y"]),
        ],
        [helper.make_opsetid("", OPSET)],
    )
    g = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["a"]), helper.make_node("AddConst", ["a"], ["Y"], domain="local")],
        "fn",
        [_vi("X", TensorProto.FLOAT, [2, 40])],
        [_vi("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_f32(rng, 40, 40), "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)], functions=[fn])
    m.ir_version = IR
    return _save(m, d, "function.onnx", {"X": _f32(rng, 2, 40)})


CORRECTNESS_MODELS: dict[str, Callable[[str], Generated]] = {
    "embedded": make_embedded,
    "external_one_file": make_external_one_file,
    "external_many_files": make_external_many_files,
    "constants": make_constants,
    "subgraphs": make_subgraphs,
    "dtypes": make_dtypes,
    "sparse": make_sparse,
    "ir3": make_ir3,
    "conv_bn": make_conv_bn,
    "function": make_function,
}


# ---------------------------------------------------------------------------
# Models of any size, written without holding the weights
# ---------------------------------------------------------------------------


@dataclass
class StreamedTensor:
    """A float32 initializer that :func:`write_streamed_model` generates chunk by chunk.

    ``value(i)`` for flat index ``i`` is ``((i * 2654435761 + seed) % 65521 - 32760) / 65536``:
    cheap, deterministic, and different per tensor.
    """

    name: str
    shape: tuple[int, ...]
    seed: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def chunks(self, chunk_elems: int = 1 << 22) -> Iterable[bytes]:
        n = self.nbytes // 4
        for start in range(0, n, chunk_elems):
            i = np.arange(start, min(n, start + chunk_elems), dtype=np.uint64)
            v = ((i * np.uint64(2654435761) + np.uint64(self.seed)) % np.uint64(65521)).astype(np.float32)
            yield ((v - np.float32(32760)) / np.float32(65536)).tobytes()

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The values of the given rows (first axis), computed without the file."""
        cols = int(np.prod(self.shape[1:]))
        i = (rows.astype(np.uint64)[:, None] * np.uint64(cols) + np.arange(cols, dtype=np.uint64)[None, :])
        v = ((i * np.uint64(2654435761) + np.uint64(self.seed)) % np.uint64(65521)).astype(np.float32)
        return (v - np.float32(32760)) / np.float32(65536)


def write_streamed_model(
    path: str,
    graph: onnx.GraphProto,
    tensors: Sequence[StreamedTensor],
    external: str | None = None,
    align: int = 4096,
    opset: int = OPSET,
) -> list[str]:
    """Write a model whose big float32 initializers are generated chunk by chunk.

    Parameters
    ----------
    path : str
        The ``.onnx`` file to write.
    graph : onnx.GraphProto
        Nodes, inputs, outputs and any small initializers; `tensors` are added.
    tensors : sequence of StreamedTensor
        The big initializers.
    external : str, optional
        Put them in this external file (relative to the model), at
        `align`-aligned offsets; otherwise embed them as ``raw_data`` (the
        model may then exceed protobuf's 2 GiB limit only in theory: keep
        embedded models below it).
    align : int
        Offset alignment in the external file.
    opset : int
        Default-domain opset.

    Returns
    -------
    list of str
        The files written.
    """
    d = os.path.dirname(os.path.abspath(path))
    files = [path]
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    if external is not None:
        ext_path = os.path.join(d, external)
        files.append(ext_path)
        offset = 0
        with open(ext_path, "wb") as f:
            for t in tensors:
                pad = (-offset) % align
                f.write(b"\x00" * pad)
                offset += pad
                for c in t.chunks():
                    f.write(c)
                proto = g.initializer.add()
                proto.name, proto.data_type = t.name, TensorProto.FLOAT
                proto.dims.extend(t.shape)
                _set_external(proto, external, offset, t.nbytes)
                offset += t.nbytes
        m = _model(g, opset)
        with open(path, "wb") as f:
            f.write(m.SerializeToString())
        return files
    # Embedded: the ModelProto's graph field = small graph + one initializer field per tensor.
    heads = []
    body_len = len(g.SerializeToString())
    for t in tensors:
        head = TensorProto(name=t.name, data_type=TensorProto.FLOAT, dims=t.shape).SerializeToString()
        head += b"\x4a" + _varint(t.nbytes)  # raw_data (field 9) header; the bytes follow
        heads.append(head)
        body_len += 1 + len(_varint(len(head) + t.nbytes)) + len(head) + t.nbytes
    m = _model(onnx.GraphProto(), opset)
    m.ClearField("graph")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
        f.write(b"\x3a" + _varint(body_len))  # ModelProto.graph (field 7)
        f.write(g.SerializeToString())
        for t, head in zip(tensors, heads):
            f.write(b"\x2a" + _varint(len(head) + t.nbytes))  # GraphProto.initializer (field 5)
            f.write(head)
            for c in t.chunks():
                f.write(c)
    return files


def make_gather_model(path: str, tables: Sequence[StreamedTensor], external: str | None) -> Generated:
    """Y_k = Gather(table_k, idx_k) for each table: touches only a few rows (first, middle, last) of huge weights."""
    nodes = [helper.make_node("Gather", [t.name, f"idx{k}"], [f"Y{k}"]) for k, t in enumerate(tables)]
    g = helper.make_graph(
        nodes,
        "gather",
        [_vi(f"idx{k}", TensorProto.INT64, [None]) for k in range(len(tables))],
        [_vi(f"Y{k}", TensorProto.FLOAT, None) for k in range(len(tables))],
    )
    files = write_streamed_model(path, g, tables, external)
    feeds = {}
    for k, t in enumerate(tables):
        rows = t.shape[0]
        feeds[f"idx{k}"] = np.array([0, 1, rows // 2, rows - 2, rows - 1], dtype=np.int64)
    return Generated(path, feeds, files)


def make_matmul_chain(path: str, layers: int, dim: int, external: str | None) -> Generated:
    """X @ W0 @ W1 ... with `layers` float32 [dim, dim] weights (the brief's 1 GiB shape: 16 x 4096)."""
    tensors = [StreamedTensor(f"W{i}", (dim, dim), seed=i) for i in range(layers)]
    nodes = []
    prev = "X"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "chain", [_vi("X", TensorProto.FLOAT, ["batch", dim])], [_vi(prev, TensorProto.FLOAT, None)])
    files = write_streamed_model(path, g, tensors, external)
    return Generated(path, {"X": np.full((1, dim), 0.01, np.float32)}, files)


# ---------------------------------------------------------------------------
# onnx's own backend test data
# ---------------------------------------------------------------------------


def backend_models() -> list[str]:
    """Every ``model.onnx`` under ``onnx/backend/test/data`` that carries weights (initializers or Constants)."""
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    out = []
    for dirpath, _dirs, files in os.walk(root):
        if "model.onnx" not in files:
            continue
        p = os.path.join(dirpath, "model.onnx")
        m = onnx.load(p, load_external_data=False)
        if m.graph.initializer or m.graph.sparse_initializer or any(n.op_type == "Constant" for n in m.graph.node):
            out.append(p)
    return sorted(out)


def backend_feeds(model_path: str) -> dict[str, np.ndarray] | None:
    """Inputs of a backend test model from its ``test_data_set_0``, or ``None`` if it has none."""
    d = os.path.join(os.path.dirname(model_path), "test_data_set_0")
    if not os.path.isdir(d):
        return None
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    feeds = {}
    for k, name in enumerate(names):
        p = os.path.join(d, f"input_{k}.pb")
        if not os.path.exists(p):
            return None
        t = TensorProto()
        with open(p, "rb") as f:
            t.ParseFromString(f.read())
        feeds[name] = numpy_helper.to_array(t)
    return feeds


# ---------------------------------------------------------------------------
# A model exported by torch.onnx.export
# ---------------------------------------------------------------------------


def make_torch_exported(d: str) -> Generated:
    """A small CNN + MLP exported by ``torch.onnx.export`` (raises ImportError without torch)."""
    import warnings

    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)
            self.fc1 = torch.nn.Linear(16 * 8 * 8, 64)
            self.fc2 = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.bn(self.conv(x)))
            return self.fc2(torch.relu(self.fc1(h.flatten(1))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "torch.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    return Generated(path, {"x": x.numpy()}, [path])
