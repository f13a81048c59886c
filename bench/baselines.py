"""Baselines: what pyaccel is compared to, measured on the same files in the same run.

Two halves:

* ``job_*`` functions run inside a fresh worker process (see :mod:`bench.measure`);
  they import what they need during set-up and wrap only the measured step in
  ``probe.step()``.
* ``run_baselines(models, ctx)`` drives them and turns the measurements into
  :class:`bench.Figure` objects keyed ``"model/name"``.

Figure names (per model unless stated):

=========================== ======= ==============================================
name                        unit    what
=========================== ======= ==============================================
model_size                  MiB     tensor payload bytes (reference for PSS ratios)
memcpy                      GB/s    numpy.copyto of model_size bytes between two
                                    pre-faulted buffers
read_hot                    GB/s    read() of the weights file (the .bin, or the
                                    .onnx when embedded) into a pre-faulted buffer,
                                    page cache hot
read_cold                   GB/s    the same after drop_caches (root)
odirect_cold                GB/s    O_DIRECT reads, 4 MiB aligned buffer reused,
                                    like ``dd iflag=direct bs=4M``, after
                                    drop_caches (root; not on tmpfs)
numpy_fromfile_hot          GB/s    numpy.fromfile(weights file, uint8), hot
numpy_fromfile_hot.peak_rss MiB     peak RSS above the interpreter before the step
onnx_load_hot               s       onnx.load(model.onnx) incl. external data, hot
onnx_load_hot.peak_rss      MiB
safetensors_load_hot        s       safetensors.numpy.load_file(weights.safetensors)
safetensors_load_hot.peak_rss MiB
ort_session_prepack         s       onnxruntime.InferenceSession(model.onnx), CPU,
                                    defaults (prepacking on), time to ready, hot
ort_session_prepack.peak_rss MiB
ort_session_noprepack       s       the same with session.disable_prepacking=1
ort_session_noprepack.peak_rss MiB
ort_first_result_{prepack,noprepack} s   session from the file + its first
                                    inference (batch 1), timed together, hot
ort_infer_b{1,8}_{prepack,noprepack} ms  median latency of ``runs`` session.run()
                                    calls (after 3 warm-up runs), batch 1 and 8
ort_4proc_pss_{noprepack,prepack} MiB    big_external only: 4 live processes each
                                    holding a session from the file that has run one
                                    inference (batch 1), summed PSS
=========================== ======= ==============================================
"""

from __future__ import annotations

import fnmatch
import hashlib
import mmap
import os
import statistics
import time
import traceback

from bench import Figure, figure_key

GB = 1e9
MiB = 1 << 20
READ_CHUNK = 1 << 30  # read() returns at most ~2 GiB; 1 GiB per call
ODIRECT_BS = 4 << 20


# ---------------------------------------------------------------------------
# jobs (run in the worker process)


def _prefault(nbytes: int):
    import numpy as np

    a = np.empty(nbytes, dtype=np.uint8)
    a.fill(0)  # touch every page
    return a


def job_memcpy(probe, nbytes: int):
    import numpy as np

    src = _prefault(nbytes)
    src.fill(1)
    dst = _prefault(nbytes)
    with probe.step():
        np.copyto(dst, src)
    if dst[-1] != 1:
        raise AssertionError("copy did not happen")
    return {"bytes": nbytes}


def job_read(probe, path: str):
    nbytes = os.path.getsize(path)
    buf = _prefault(nbytes)
    mv = memoryview(buf)
    with probe.step():
        fd = os.open(path, os.O_RDONLY)
        try:
            off = 0
            while off < nbytes:
                n = os.readv(fd, [mv[off:off + READ_CHUNK]])
                if n == 0:
                    break
                off += n
        finally:
            os.close(fd)
    if off != nbytes:
        raise AssertionError(f"read {off} of {nbytes} bytes")
    return {"bytes": nbytes}


def job_odirect(probe, path: str, bs: int = ODIRECT_BS):
    from bench.measure import Skip

    buf = mmap.mmap(-1, bs)  # page aligned
    buf.write(b"\0" * bs)  # fault it in
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        raise Skip(f"O_DIRECT open failed: {os.strerror(e.errno)}") from None
    total = 0
    try:
        with probe.step():
            while True:
                n = os.readv(fd, [buf])
                if n <= 0:
                    break
                total += n
    finally:
        os.close(fd)
        buf.close()
    size = os.path.getsize(path)
    if total != size:
        raise AssertionError(f"O_DIRECT read {total} of {size} bytes")
    return {"bytes": total, "bs": bs}


def job_numpy_fromfile(probe, path: str):
    import numpy as np

    with probe.step():
        a = np.fromfile(path, dtype=np.uint8)
    return {"bytes": int(a.nbytes)}


def job_onnx_load(probe, path: str):
    import onnx

    with probe.step():
        m = onnx.load(path)
    return {"initializers": len(m.graph.initializer)}


def job_safetensors(probe, path: str):
    from safetensors.numpy import load_file

    with probe.step():
        d = load_file(path)
    return {"tensors": len(d), "bytes": int(sum(a.nbytes for a in d.values()))}


def _session_options(prepack: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def job_ort_session(probe, path: str, prepack: bool, run_batch: int | None = None,
                    input_name: str | None = None, input_shape: list | None = None):
    """Time to ready of a session from the file. With ``run_batch``, one inference
    follows the step (not timed), so that the weights the session really uses are
    faulted in before PSS is read: a session that has served a request."""
    import onnxruntime as ort

    so = _session_options(prepack)
    with probe.step():
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    probe.keep(s)  # alive while held (ort_4proc_pss) and for pss_end
    out = {"prepack": prepack}
    if run_batch:
        import numpy as np

        shape = [run_batch if isinstance(d, str) else int(d) for d in input_shape]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        s.run(None, {input_name: x})
        out["ran_batch"] = run_batch
    return out


def job_ort_first_result(probe, path: str, prepack: bool, input_name: str, input_shape: list):
    """Session from the file plus its first inference (batch 1), timed together:
    onnxruntime maps external data lazily, so a session that is "ready" in a few ms
    still pays for faulting the weights in on its first run."""
    import numpy as np
    import onnxruntime as ort

    so = _session_options(prepack)
    shape = [1 if isinstance(d, str) else int(d) for d in input_shape]
    feed = {input_name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    with probe.step():
        t0 = time.perf_counter()
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        t1 = time.perf_counter()
        s.run(None, feed)
    return {"prepack": prepack, "session_s": t1 - t0}


def job_ort_infer(probe, path: str, prepack: bool, input_name: str, input_shape: list,
                  batches=(1, 8), runs: int = 20, warmup: int = 3):
    import numpy as np
    import onnxruntime as ort

    s = ort.InferenceSession(path, _session_options(prepack), providers=["CPUExecutionProvider"])
    out: dict = {"prepack": prepack, "runs": runs}
    feeds = {}
    for b in batches:
        shape = [b if isinstance(d, str) else int(d) for d in input_shape]
        feeds[b] = {input_name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    with probe.step():
        time_runs(s, feeds, warmup, runs, out)
    return out


def time_runs(session, feeds: dict, warmup: int, runs: int, out: dict) -> None:
    """Latency of ``session.run`` per batch into ``out``: median, min, all (ms), output sha256.

    The sha256 of the outputs (same input seed 0, same options) is the
    reference for pyaccel's bit-identity figure; pyaccel's latency jobs use
    this same loop.
    """
    import numpy as np

    for b, feed in feeds.items():
        for _ in range(warmup):
            y = session.run(None, feed)
        lat = []
        for _ in range(runs):
            t0 = time.perf_counter()
            y = session.run(None, feed)
            lat.append(time.perf_counter() - t0)
        out[f"b{b}_ms_median"] = statistics.median(lat) * 1e3
        out[f"b{b}_ms_min"] = min(lat) * 1e3
        out[f"b{b}_ms_all"] = [x * 1e3 for x in lat]
        out[f"b{b}_output_sha256"] = hashlib.sha256(
            b"".join(np.ascontiguousarray(a).tobytes() for a in y)).hexdigest()


# ---------------------------------------------------------------------------
# figures


def figure_from_stats(name: str, model: str | None, stats, *, metric: str = "time",
                      nbytes: int | None = None, **fig_kw) -> Figure:
    """See :meth:`bench.BenchContext.figure_from_stats`."""
    details = {
        "n": len(stats.samples),
        "time_s_median": stats.median(), "time_s_min": stats.min(), "time_s_max": stats.max(),
        "time_s_all": [m.time_s for m in stats.samples],
        "peak_delta_mib": stats.median("peak_delta") / MiB,
        "peak_rss_mib": stats.median("peak_rss") / MiB,
        "rss_before_mib": stats.median("rss_before") / MiB,
        "rss_start_mib": stats.median("rss_start") / MiB,
        "pss_mib": stats.median("pss") / MiB,
    }
    details.update(fig_kw.pop("details", {}))
    if metric == "time":
        value, unit, better = stats.median(), "s", "lower"
    elif metric == "throughput":
        if not nbytes:
            raise ValueError("throughput needs nbytes")
        value, unit, better = nbytes / stats.median() / GB, "GB/s", "higher"
        details.update(bytes=nbytes, best_gbps=nbytes / stats.min() / GB)
    elif metric == "peak_delta":
        value, unit, better = stats.median("peak_delta") / MiB, "MiB", "lower"
    else:
        raise ValueError(f"unknown metric {metric!r}")
    fig_kw.setdefault("better", better)
    return Figure(name, value, unit, model, details=details, **fig_kw)


def _rss_figure(name: str, model: str, stats) -> Figure:
    return figure_from_stats(
        name + ".peak_rss", model, stats, metric="peak_delta",
        note="" if all(m.hwm_reset for m in stats.samples) else "VmHWM reset unavailable")


class _Runner:
    def __init__(self, ctx, select):
        self.ctx = ctx
        self.select = select  # callable(name) -> bool
        self.figs: list[Figure] = []

    def skip(self, name: str, model: str | None, unit: str, why: str) -> None:
        self.figs.append(Figure(name, None, unit, model, skipped=why))
        self.ctx.log(f"  {figure_key(name, model):40s} skipped: {why}")

    def add(self, fig: Figure) -> None:
        self.figs.append(fig)
        det = fig.details
        extra = ""
        if "time_s_min" in det and fig.unit in ("s", "GB/s"):
            extra = f"  (median of {det['n']}, min {det['time_s_min']:.4g} s)"
        self.ctx.log(f"  {fig.key:40s} {fig.value:12.4g} {fig.unit}{extra}")

    def run(self, name: str, model, unit: str, fn) -> None:
        """Run ``fn()`` -> list[Figure] unless filtered out; record skips and errors."""
        from bench.measure import MeasureError, Skip

        if not self.select(name):
            return
        try:
            for f in fn():
                self.add(f)
        except Skip as e:
            self.skip(name, model, unit, str(e))
        except MeasureError as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else "?"
            self.skip(name, model, unit, f"failed: {last}")
            self.ctx.log(str(e))
        except Exception as e:  # noqa: BLE001 - one baseline must not sink the run
            self.skip(name, model, unit, f"failed: {type(e).__name__}: {e}")
            self.ctx.log(traceback.format_exc())


def baseline_names() -> list[str]:
    """Every top-level baseline name (what ``--only`` matches against)."""
    return ["model_size", "memcpy", "read_hot", "numpy_fromfile_hot", "onnx_load_hot",
            "safetensors_load_hot", "ort_session_prepack", "ort_session_noprepack",
            "ort_first_result_prepack", "ort_first_result_noprepack", "ort_infer_prepack", "ort_infer_noprepack", "read_cold", "odirect_cold",
            "ort_4proc_pss_noprepack", "ort_4proc_pss_prepack"]


def make_selector(patterns: list[str] | None):
    """``--only`` patterns (globs) -> predicate over baseline names; None selects all."""
    if not patterns:
        return lambda name: True

    def sel(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or name.startswith(p) for p in patterns)

    return sel


def run_baselines(models: dict, ctx, select=None) -> dict[str, Figure]:
    """Measure every selected baseline on every model. Returns {key: Figure}."""
    from bench.measure import HeldProcesses, Skip, mem_available, repeat_isolated

    r = _Runner(ctx, select or (lambda n: True))
    n = ctx.repeat
    can_cold, cold_why = ctx.can_drop_caches

    for mname, rec in models.items():
        ctx.log(f"[{mname}] {rec.weight_bytes / MiB:.1f} MiB in {rec.tensor_count} tensors, "
                f"{os.path.basename(rec.weights_file)} {os.path.getsize(rec.weights_file) / MiB:.1f} MiB")
        wf = rec.weights_file
        wbytes = os.path.getsize(wf)

        r.run("model_size", mname, "MiB", lambda: [Figure(
            "model_size", rec.weight_bytes / MiB, "MiB", mname, better="lower",
            details={"bytes": rec.weight_bytes, "file_bytes": rec.file_bytes,
                     "tensors": rec.tensor_count})])

        r.run("memcpy", mname, "GB/s", lambda: [figure_from_stats(
            "memcpy", mname, repeat_isolated("bench.baselines:job_memcpy",
                                             {"nbytes": rec.weight_bytes}, n),
            metric="throughput", nbytes=rec.weight_bytes)])

        r.run("read_hot", mname, "GB/s", lambda: [figure_from_stats(
            "read_hot", mname, repeat_isolated("bench.baselines:job_read", {"path": wf}, n,
                                               warm=[wf]),
            metric="throughput", nbytes=wbytes, details={"file": wf})])

        def fromfile():
            st = repeat_isolated("bench.baselines:job_numpy_fromfile", {"path": wf}, n, warm=[wf])
            return [figure_from_stats("numpy_fromfile_hot", mname, st, metric="throughput",
                                      nbytes=wbytes),
                    _rss_figure("numpy_fromfile_hot", mname, st)]
        r.run("numpy_fromfile_hot", mname, "GB/s", fromfile)

        def onnx_load():
            st = repeat_isolated("bench.baselines:job_onnx_load", {"path": rec.path}, n,
                                 warm=rec.files)
            return [figure_from_stats("onnx_load_hot", mname, st), _rss_figure("onnx_load_hot", mname, st)]
        r.run("onnx_load_hot", mname, "s", onnx_load)

        def st_load():
            st = repeat_isolated("bench.baselines:job_safetensors", {"path": rec.safetensors_path},
                                 n, warm=[rec.safetensors_path])
            return [figure_from_stats("safetensors_load_hot", mname, st),
                    _rss_figure("safetensors_load_hot", mname, st)]
        r.run("safetensors_load_hot", mname, "s", st_load)

        for prepack in (True, False):
            tag = "prepack" if prepack else "noprepack"

            def session(prepack=prepack, tag=tag):
                st = repeat_isolated("bench.baselines:job_ort_session",
                                     {"path": rec.path, "prepack": prepack}, n, warm=rec.files)
                return [figure_from_stats(f"ort_session_{tag}", mname, st),
                        _rss_figure(f"ort_session_{tag}", mname, st)]
            r.run(f"ort_session_{tag}", mname, "s", session)

        for prepack in (True, False):
            tag = "prepack" if prepack else "noprepack"

            def first(prepack=prepack, tag=tag):
                st = repeat_isolated(
                    "bench.baselines:job_ort_first_result",
                    {"path": rec.path, "prepack": prepack, "input_name": rec.input_name,
                     "input_shape": rec.input_shape}, n, warm=rec.files)
                return [figure_from_stats(f"ort_first_result_{tag}", mname, st, details={
                    "session_s_median": st.extra_median("session_s")})]
            r.run(f"ort_first_result_{tag}", mname, "s", first)

        for prepack in (True, False):
            tag = "prepack" if prepack else "noprepack"

            def infer(prepack=prepack, tag=tag):
                st = repeat_isolated(
                    "bench.baselines:job_ort_infer",
                    {"path": rec.path, "prepack": prepack, "input_name": rec.input_name,
                     "input_shape": rec.input_shape, "runs": ctx.latency_runs},
                    1, warm=rec.files)
                ex = st.samples[0].extra
                figs = []
                for b in (1, 8):
                    figs.append(Figure(
                        f"ort_infer_b{b}_{tag}", ex[f"b{b}_ms_median"], "ms", mname,
                        better="lower",
                        details={"min_ms": ex[f"b{b}_ms_min"], "all_ms": ex[f"b{b}_ms_all"],
                                 "runs": ex["runs"], "batch": b, "input_seed": 0,
                                 "output_sha256": ex[f"b{b}_output_sha256"]}))
                return figs
            r.run(f"ort_infer_{tag}", mname, "ms", infer)

        # cold reads last for this model: they empty the page cache
        if not can_cold:
            for name in ("read_cold", "odirect_cold"):
                if r.select(name):
                    r.skip(name, mname, "GB/s", cold_why)
        else:
            r.run("read_cold", mname, "GB/s", lambda: [figure_from_stats(
                "read_cold", mname, repeat_isolated("bench.baselines:job_read", {"path": wf}, n,
                                                    cold=True),
                metric="throughput", nbytes=wbytes, details={"file": wf})])
            from bench.measure import odirect_supported

            ok, why = odirect_supported(wf)
            if not ok:
                if r.select("odirect_cold"):
                    r.skip("odirect_cold", mname, "GB/s", why)
            else:
                r.run("odirect_cold", mname, "GB/s", lambda: [figure_from_stats(
                    "odirect_cold", mname, repeat_isolated("bench.baselines:job_odirect",
                                                           {"path": wf}, n, cold=True),
                    metric="throughput", nbytes=wbytes, details={"file": wf, "bs": ODIRECT_BS})])

    # sharing: 4 processes each holding a session on the big model
    rec = models.get("big_external")
    if rec is not None:
        for prepack in (False, True):
            tag = "prepack" if prepack else "noprepack"
            name = f"ort_4proc_pss_{tag}"

            def held(prepack=prepack, name=name):
                k = 4
                need = k * (rec.weight_bytes * (2 if prepack else 1) + 300 * MiB)
                avail = mem_available()
                if avail < need * 1.3:
                    raise Skip(f"needs ~{need / MiB:.0f} MiB, {avail / MiB:.0f} MiB available")
                with HeldProcesses("bench.baselines:job_ort_session",
                                   {"path": rec.path, "prepack": prepack, "run_batch": 1,
                                    "input_name": rec.input_name,
                                    "input_shape": rec.input_shape}, k,
                                   warm=rec.files) as h:
                    each = h.pss_each()
                    rss = h.rss_each()
                total = sum(each)
                return [Figure(name, total / MiB, "MiB", "big_external", better="lower",
                               note="" if prepack else
                               "each process: session from the file + 1 inference (batch 1), "
                               "PSS includes each interpreter (python+onnxruntime)",
                               details={"processes": k, "pss_each_mib": [p / MiB for p in each],
                                        "rss_each_mib": [p / MiB for p in rss],
                                        "model_size_mib": rec.weight_bytes / MiB,
                                        "ratio_to_model_size": total / rec.weight_bytes,
                                        "session_s_each": [m.time_s for m in h.measurements]})]
            r.run(name, "big_external", "MiB", held)
    return {f.key: f for f in r.figs}
