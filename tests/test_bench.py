"""The benchmark harness (bench/): models, measurement helpers, report, and one
``python -m bench --quick`` run checked end to end (JSON, PNG, plug-in contract)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import Figure, measure, models, report  # noqa: E402

HOT_GBPS = ["memcpy", "read_hot", "numpy_fromfile_hot"]
HOT_S = ["onnx_load_hot", "safetensors_load_hot", "ort_session_prepack", "ort_session_noprepack"]
RSS = [n + ".peak_rss" for n in ["numpy_fromfile_hot"] + HOT_S]
HOT_S += ["ort_first_result_prepack", "ort_first_result_noprepack"]
LAT = ["ort_infer_b1_prepack", "ort_infer_b8_prepack", "ort_infer_b1_noprepack",
       "ort_infer_b8_noprepack"]
COLD = ["read_cold", "odirect_cold"]


# ---------------------------------------------------------------------------
# fast unit tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bench-models"))
    return {n: models.generate(n, d, 0.002, **({"count": 300} if n == "many_small" else {}))
            for n in models.MODEL_NAMES}


def test_models_load_and_match_safetensors(tiny):
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    for rec in tiny.values():
        m = onnx.load(rec.path)
        onnx.checker.check_model(m)
        st = load_file(rec.safetensors_path)
        assert len(m.graph.initializer) == rec.tensor_count == len(st)
        total = 0
        for t in m.graph.initializer:
            a = numpy_helper.to_array(t)
            assert np.array_equal(a, st[t.name]), t.name
            total += a.nbytes
        assert total == rec.weight_bytes


def test_embedded_bytes_identical_to_onnx_save(tiny):
    import onnx

    for name in ("embedded", "many_small"):
        rec = tiny[name]
        with open(rec.path, "rb") as f:
            raw = f.read()
        assert raw == onnx.load(rec.path).SerializeToString()


def test_external_offsets_aligned(tiny):
    import onnx

    m = onnx.load(tiny["big_external"].path, load_external_data=False)
    for t in m.graph.initializer:
        kv = {e.key: e.value for e in t.external_data}
        assert kv["location"] == "model.bin"
        assert int(kv["offset"]) % models.ALIGN == 0


def test_models_deterministic_and_cached(tiny, tmp_path):
    rec = tiny["big_external"]
    again = models.generate("big_external", os.path.dirname(rec.dir), 0.002)
    assert again == rec  # reused, not regenerated
    other = models.generate("big_external", str(tmp_path), 0.002)
    with open(rec.data_path, "rb") as a, open(other.data_path, "rb") as b:
        assert a.read() == b.read()


def test_models_regenerate_when_a_file_changes(tiny, tmp_path):
    rec = models.generate("embedded", str(tmp_path), 0.002)
    with open(rec.path, "ab") as f:
        f.write(b"x")
    again = models.generate("embedded", str(tmp_path), 0.002)
    assert os.path.getsize(again.path) == rec.file_bytes


def test_ort_runs_each_model(tiny):
    import onnxruntime as ort

    for rec in tiny.values():
        s = ort.InferenceSession(rec.path, providers=["CPUExecutionProvider"])
        y = s.run(None, models.make_input(rec, 2))[0]
        assert y.shape[0] == 2 and np.isfinite(y).all()


def test_run_isolated_measures_a_fresh_process(tmp_path):
    m = measure.run_isolated("bench.baselines:job_memcpy", {"nbytes": 8 << 20})
    assert m.pid != os.getpid()
    assert m.time_s > 0 and m.rss_before > 0 and m.pss > 0
    assert m.peak_rss >= m.rss_before
    assert m.extra["bytes"] == 8 << 20


def test_run_isolated_reports_job_errors():
    with pytest.raises(measure.MeasureError, match="FileNotFoundError"):
        measure.run_isolated("bench.baselines:job_read", {"path": "/nonexistent/file"})


def test_held_processes_sum_pss(tiny):
    with measure.HeldProcesses("bench.baselines:job_memcpy", {"nbytes": 1 << 20}, 2) as h:
        each = h.pss_each()
        assert len(each) == 2 and all(p > 0 for p in each)
        assert h.pss_total() > 0
        pids = h.pids
    for p in pids:
        assert not os.path.exists(f"/proc/{p}")  # released and reaped


def test_evaluate_ratios_units_and_targets():
    figs = {
        "m/read_hot": Figure("read_hot", 8.0, "GB/s", "m"),
        "m/onnx_load_hot": Figure("onnx_load_hot", 0.5, "s", "m"),
        "m/model_size": Figure("model_size", 1024.0, "MiB", "m"),
        "m/read_cold": Figure("read_cold", None, "GB/s", "m", skipped="not root"),
    }
    hot = Figure("hot_load", 7.0, "GB/s", "m", "read_hot", 0.8)
    ev = report.evaluate(hot, figs)
    assert ev["ratio"] == pytest.approx(7 / 8) and ev["status"] == "PASS"
    attach = Figure("attach", 20.0, "ms", "m", "onnx_load_hot", 0.02, "lower")
    ev = report.evaluate(attach, figs)
    assert ev["ratio"] == pytest.approx(0.04) and ev["status"] == "MISS"
    pss = Figure("pss", 1.2, "GiB", "m", "m/model_size", 1.3, "lower")
    assert report.evaluate(pss, figs)["ratio"] == pytest.approx(1.2)
    assert report.evaluate(Figure("rss", 63, "MiB", "m", target_value=64, better="lower"),
                           figs)["status"] == "PASS"
    assert report.evaluate(Figure("c", 1.0, "GB/s", "m", "read_cold", 0.9), figs)["status"] == "—"
    assert report.evaluate(Figure("x", 1.0, "s", "m", "read_hot", 0.9), figs)["status"] == "—"
    assert report.evaluate(Figure("y", 1.0, "s", "m", "absent", 0.9), figs)["status"] == "—"
    with pytest.raises(ValueError):
        Figure("z", 1.0, "s", better="faster")


def test_cold_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ok, why = measure.can_drop_caches()
    assert not ok and "root" in why
    with pytest.raises(measure.Skip, match="root"):
        measure.run_isolated("bench.baselines:job_read", {"path": __file__}, cold=True)


# ---------------------------------------------------------------------------
# one quick run of the whole harness

FAKE_PLUGIN = textwrap.dedent('''
    from bench import Figure

    def figures(models, ctx):
        assert set(models) == {"big_external", "embedded", "many_small"}
        rh = ctx.baseline("read_hot", "big_external")
        return [
            Figure("hot_load", rh.value * 0.9, "GB/s", "big_external", "read_hot", 0.8),
            Figure("attach", 1e6, "ms", "big_external", "onnx_load_hot", 0.02, "lower"),
            Figure("stream_peak_rss", 10.0, "MiB", "big_external", target_value=64,
                   better="lower"),
            Figure("cold_load", None, "GB/s", "big_external", "odirect_cold", 0.9,
                   skipped="not in the fake plug-in"),
        ]
''')


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-quick")
    plugin = d / "fake_plugin.py"
    plugin.write_text(FAKE_PLUGIN)
    out_json, out_png = d / "r.json", d / "r.png"
    env = dict(os.environ, PYACCEL_BENCH_PLUGIN=str(plugin))
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workdir", str(d / "data"),
         "--json", str(out_json), "--png", str(out_png)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out_json) as f:
        doc = json.load(f)
    return {"doc": doc, "png": out_png, "stdout": p.stdout, "workdir": d / "data"}


@pytest.mark.slow
def test_quick_json_has_every_hot_baseline(quick_run):
    doc = quick_run["doc"]
    base = doc["baselines"]
    for model in models.MODEL_NAMES:
        for name in ["model_size"] + HOT_GBPS + HOT_S + RSS + LAT:
            key = f"{model}/{name}"
            assert key in base, key
            assert base[key]["skipped"] is None, (key, base[key]["skipped"])
            assert base[key]["value"] > 0, key
        assert base[f"{model}/read_hot"]["unit"] == "GB/s"
        assert base[f"{model}/onnx_load_hot"]["unit"] == "s"
    for tag in ("noprepack", "prepack"):
        assert base[f"big_external/ort_4proc_pss_{tag}"]["value"] > 0
    m = doc["machine"]
    assert m["cpu_count"] >= 1 and m["ram_bytes"] > 0 and m["kernel"] and m["date"]
    assert m["versions"]["onnxruntime"] and m["versions"]["numpy"]
    assert doc["run"]["quick"] is True


@pytest.mark.slow
def test_quick_cold_baselines(quick_run):
    doc = quick_run["doc"]
    base = doc["baselines"]
    can, why = doc["capabilities"]["drop_caches"]
    if not can:
        assert base["big_external/read_cold"]["skipped"]
        pytest.skip(f"cold figures need drop_caches: {why}")
    for model in models.MODEL_NAMES:
        assert base[f"{model}/read_cold"]["value"] > 0
    ok, why = doc["capabilities"]["odirect"]
    if not ok:
        assert base["big_external/odirect_cold"]["skipped"]
        pytest.skip(f"O_DIRECT unsupported on the work dir's filesystem: {why}")
    for model in models.MODEL_NAMES:
        assert base[f"{model}/odirect_cold"]["value"] > 0


@pytest.mark.slow
def test_quick_png_written(quick_run):
    with open(quick_run["png"], "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(quick_run["png"]) > 10_000


@pytest.mark.slow
def test_quick_plugin_contract(quick_run):
    doc = quick_run["doc"]
    py = doc["pyaccel"]
    assert py["available"] is True
    f = py["figures"]
    assert f["big_external/hot_load"]["status"] == "PASS"
    assert f["big_external/hot_load"]["ratio"] == pytest.approx(0.9)
    assert f["big_external/attach"]["status"] == "MISS"
    assert f["big_external/stream_peak_rss"]["status"] == "PASS"
    assert f["big_external/cold_load"]["status"] == "—"
    assert "1 MISS" in quick_run["stdout"] and "2 PASS" in quick_run["stdout"]


def test_missing_plugin_is_reported(tmp_path):
    env = dict(os.environ, PYACCEL_BENCH_PLUGIN=str(tmp_path / "absent.py"))
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "pyaccel", "--size", "0.002", "-q",
         "--workdir", str(tmp_path / "d"), "--json", str(tmp_path / "r.json"),
         "--png", str(tmp_path / "r.png")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "pyaccel figures: not available" in p.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["pyaccel"]["available"] is False and doc["baselines"] == {}


def test_only_rejects_unknown_names(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench", "--only", "nosuch", "--workdir",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "nosuch" in p.stderr


# ---------------------------------------------------------------------------
# the real plug-in (bench/pyaccel_figures.py) in the quick run CI makes

PYACCEL_PER_MODEL = ["hot_load", "stream_peak_rss", "attach", "session_noprepack",
                     "session_prepack", "first_result_noprepack", "first_result_prepack",
                     "infer_b1_noprepack", "infer_b8_noprepack", "infer_b1_prepack",
                     "infer_b8_prepack", "outputs_identical"]
PYACCEL_JUDGED = {  # figure -> the baseline its ratio is taken against
    "hot_load": "read_hot", "attach": "onnx_load_hot", "session_noprepack": "ort_session_noprepack",
    "session_prepack": "ort_session_prepack", "infer_b1_noprepack": "ort_infer_b1_noprepack",
    "infer_b8_prepack": "ort_infer_b8_prepack"}


@pytest.fixture(scope="module")
def real_quick_run(tmp_path_factory):
    pytest.importorskip("pyaccel._driver", reason="pyaccel not built (make)")
    d = tmp_path_factory.mktemp("bench-real")
    out_json = d / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "PYACCEL_BENCH_PLUGIN"}
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workdir", str(d / "data"),
         "--json", str(out_json), "--png", str(d / "r.png")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out_json) as f:
        return {"doc": json.load(f), "stdout": p.stdout, "stderr": p.stderr}


@pytest.mark.slow
def test_quick_run_has_pyaccel_figures(real_quick_run):
    doc = real_quick_run["doc"]
    py = doc["pyaccel"]
    assert py["available"] is True, py
    figs = py["figures"]
    for model in models.MODEL_NAMES:
        for name in PYACCEL_PER_MODEL:
            key = f"{model}/{name}"
            assert key in figs, key
            f = figs[key]
            assert f["skipped"] is None, (key, f["skipped"])
            assert isinstance(f["value"], (int, float)), (key, f["value"])
            # a peak-RSS delta can come out a little below 0 (VmHWM is updated lazily)
            assert f["value"] >= (-16 if f["unit"] == "MiB" else 0), (key, f["value"])
        for name, base in PYACCEL_JUDGED.items():
            f = figs[f"{model}/{name}"]
            assert f["baseline_key"] == f"{model}/{base}"
            assert f["ratio"] is not None and f["ratio"] > 0, (model, name, f["why"])
            assert f["status"] in ("PASS", "MISS"), (model, name, f["why"])
        assert figs[f"{model}/hot_load"]["unit"] == "GB/s" and figs[f"{model}/hot_load"]["value"] > 0
        assert figs[f"{model}/attach"]["value"] > 0
        # bit-identical outputs are a requirement, not a performance target
        assert figs[f"{model}/outputs_identical"]["value"] == 1.0, figs[f"{model}/outputs_identical"]
        # the pool file was removed
        assert not os.path.exists(figs[f"{model}/hot_load"]["details"]["pool"])
    pss = figs["big_external/pss_4proc"]
    assert pss["value"] > 0 and pss["baseline_key"] == "big_external/model_size"
    assert figs["checksum_crc32c"]["value"] > 0
    if doc["capabilities"]["drop_caches"][0]:
        for model in models.MODEL_NAMES:
            assert figs[f"{model}/cold_load"]["value"] > 0
    assert "pyaccel: " in real_quick_run["stdout"] and " PASS" in real_quick_run["stdout"]
    assert doc["run"]["durations_s"]["pyaccel"] > 0
