"""pyaccel's side of the benchmark: every target of issue 4 as a figure beside its
same-run baseline (see ``bench/README.md``, "The pyaccel figures").

``figures(models, ctx)`` runs in the harness process after the baselines; every
measured step runs in a fresh worker (``bench.measure.repeat_isolated`` /
``HeldProcesses``) through the ``job_*`` functions below, so imports, page cache
state, RSS and PSS are as honest as the baselines'.  Each worker does its imports
(pyaccel, numpy, onnx, onnxruntime) and its set-up *before* ``probe.step()``:
the figures time ``load_model`` / ``Model.session()`` / ``session.run()``, not
interpreter start-up.

Pools: one pool file per model on ``/dev/shm`` (tmpfs, the embedded default),
named ``pyaccel-bench-<pid>-<model>.pool``, sized to fit the model, created fresh
(empty) in the set-up of every streaming repetition, and deleted when the
model's figures are done (also on error, and at exit).

This module stays import-light: workers import it to find their job.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import statistics
import time

from bench import Figure

MiB = 1 << 20
GiB = 1 << 30
GB = 1e9
#: where the pools go: tmpfs by default (the embedded default); set
#: PYACCEL_BENCH_POOL_DIR to measure another backing (a hugetlbfs mount, a tmpfs
#: mounted with huge=within_size, an fsdax mount...)
POOL_DIR = os.environ.get("PYACCEL_BENCH_POOL_DIR", "/dev/shm")
CHECKSUM_BYTES = 256 * MiB
HELD = 4  # processes for the PSS figure
_POOLS: set[str] = set()


# ---------------------------------------------------------------------------
# helpers used inside the workers


def _imports() -> None:
    """Everything load_model / Model.session touch, imported before the step."""
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnx.helper  # noqa: F401  (Model.weights -> dtype lookup)

    import pyaccel  # noqa: F401
    import pyaccel._driver  # noqa: F401
    import pyaccel.loader  # noqa: F401
    import pyaccel.onnxfile  # noqa: F401
    import pyaccel.pool  # noqa: F401


def _fresh_pool(pool_path: str, size: int, catalog_size: int) -> None:
    """An empty pool at pool_path (the old file, if any, removed first)."""
    import pyaccel

    with contextlib.suppress(FileNotFoundError):
        os.unlink(pool_path)
    p = pyaccel.open_pool(pool_path, create=True, size=size, force=True,
                          catalog_size=catalog_size)
    p.close()


def _rss_parts() -> dict:
    """RssAnon / RssFile / RssShmem of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k = line.split(":", 1)[0]
            if k in ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"):
                out[k] = int(line.split()[1]) / 1024
    return out


def _feed(input_name: str, input_shape: list, batch: int):
    """The same input the harness's latency baselines use (seed 0)."""
    import numpy as np

    shape = [batch if isinstance(d, str) else int(d) for d in input_shape]
    return {input_name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}


def _session_options(prepack: bool):
    """The baselines' options (bench.baselines._session_options)."""
    from bench.baselines import _session_options as so

    return so(prepack)


# ---------------------------------------------------------------------------
# jobs (each runs in a fresh worker process)


def job_load(probe, path: str, pool_path: str, size: int, catalog_size: int,
             prefault: bool = False, breakdown: bool = False):
    """First ``load_model`` of the model into an empty pool (streams it).

    load_model opens and maps the pool itself, as a fresh process does; the
    VmHWM delta of the step is the peak RSS while streaming.

    ``prefault``: fault every page of the new pool in once (MADV_POPULATE_WRITE
    through a mapping of the pool file that is closed again; contents unchanged)
    during set-up, as a pool populated up front or used before is.  Without it
    the pool is as ``open_pool(create=True)`` leaves it: tmpfs pages reserved
    by fallocate but not yet cleared, which the first write faults in.

    ``breakdown``: after the step, time ``onnxfile.scan`` of the (hot) file
    alone, to show how much of the load is the scan.
    """
    _imports()
    import pyaccel

    _fresh_pool(pool_path, size, catalog_size)
    prefault_s = None
    if prefault:
        import mmap

        t0 = time.perf_counter()
        fd = os.open(pool_path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
            mm.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))
            mm.close()
        finally:
            os.close(fd)
        prefault_s = time.perf_counter() - t0
    before = _rss_parts()
    with probe.step():
        m = pyaccel.load_model(path, pool=pool_path, progress=False)
    after = _rss_parts()
    i = m.info
    if not i.streamed:
        raise RuntimeError("load_model attached instead of streaming into an empty pool")
    out = {"info_seconds": i.seconds, "nbytes": i.nbytes, "n_tensors": i.n_tensors,
           "info_direct_bytes": i.direct_bytes, "prefault_s": prefault_s,
           "rss_parts_before_mib": before, "rss_parts_after_mib": after}
    with contextlib.suppress(Exception):
        with pyaccel.open_pool(pool_path) as p:
            out["pool_used"] = p.status().used
    if breakdown:
        from pyaccel import onnxfile

        t0 = time.perf_counter()
        onnxfile.scan(path)
        out["scan_s"] = time.perf_counter() - t0
    return out


def job_attach(probe, path: str, pool_path: str):
    """``load_model`` of a model already in the pool, in a new process."""
    _imports()
    import pyaccel

    with probe.step():
        m = pyaccel.load_model(path, pool=pool_path, progress=False)
    i = m.info
    if i.streamed:
        raise RuntimeError("load_model streamed: the model was not in the pool")
    t0 = time.perf_counter()
    n = sum(1 for _ in m.weights.values())  # every weight array made
    weights_s = time.perf_counter() - t0
    return {"info_seconds": i.seconds, "n_tensors": i.n_tensors, "weights_all_s": weights_s,
            "arrays": n}


def job_session(probe, path: str, pool_path: str, prepack: bool, first_run: bool = False,
                run_batch: int | None = None, input_name: str | None = None,
                input_shape: list | None = None):
    """Attach + ``Model.session()`` in a new process (+ the first inference, batch 1,
    when ``first_run``: then timed together, like ``ort_first_result_*``).  With
    ``run_batch`` one inference follows the step, untimed (for held PSS)."""
    _imports()
    import onnxruntime as ort  # noqa: F401

    import pyaccel
    import pyaccel.ortsession  # noqa: F401

    so = _session_options(prepack)
    feed = _feed(input_name, input_shape, 1) if first_run else None
    with probe.step():
        t0 = time.perf_counter()
        m = pyaccel.load_model(path, pool=pool_path, progress=False)
        t1 = time.perf_counter()
        s = m.session(so, providers=["CPUExecutionProvider"], prepack=prepack)
        t2 = time.perf_counter()
        if first_run:
            s.run(None, feed)
    probe.keep(m, s)
    out = {"prepack": prepack, "attach_s": t1 - t0, "session_s": t2 - t1,
           "streamed": m.info.streamed}
    if m.info.streamed:
        raise RuntimeError("load_model streamed: the model was not in the pool")
    if run_batch:
        s.run(None, _feed(input_name, input_shape, run_batch))
        out["ran_batch"] = run_batch
    return out


def job_infer(probe, path: str, pool_path: str, prepack: bool, input_name: str,
              input_shape: list, batches=(1, 8), runs: int = 20, warmup: int = 3,
              diag: bool = False):
    """Latency of ``session.run()`` through the pool session, measured like
    ``bench.baselines.job_ort_infer``: the only session in the process, same
    input, warm-up and run count.  ``diag``: after the step, the read bandwidth
    of the weights from the pool and from the file (see :func:`_read_bandwidth`)."""
    _imports()
    import pyaccel

    m = pyaccel.load_model(path, pool=pool_path, progress=False)
    if m.info.streamed:
        raise RuntimeError("load_model streamed: the model was not in the pool")
    s = m.session(_session_options(prepack), providers=["CPUExecutionProvider"], prepack=prepack)
    feeds = {b: _feed(input_name, input_shape, b) for b in batches}
    out: dict = {"prepack": prepack, "runs": runs}
    from bench.baselines import time_runs

    with probe.step():
        time_runs(s, feeds, warmup, runs, out)
    if diag:
        out.update(_read_bandwidth(m, path))
    return out


def _read_bandwidth(m, path: str) -> dict:
    """Diagnostic: GB/s of summing every fp32 weight as the pool's arrays and, for
    external data, as a numpy.memmap of the source file (page cache: what
    onnxruntime reads from the file), alternately, median of 3 rounds."""
    import numpy as np
    import onnx

    proto = onnx.load(path, load_external_data=False)
    file_arrays = []
    for t in proto.graph.initializer:
        kv = {e.key: e.value for e in t.external_data}
        if "location" not in kv or t.name not in m.weights:
            continue
        w = m.weights[t.name]
        f = os.path.join(os.path.dirname(path), kv["location"])
        file_arrays.append(np.memmap(f, dtype=w.dtype, mode="r", offset=int(kv.get("offset", 0)),
                                     shape=w.shape))
    pool_arrays = [m.weights[n] for n in m.weights if m.weights[n].dtype == np.float32]
    file_arrays = [a for a in file_arrays if a.dtype == np.float32]
    nbytes = sum(a.nbytes for a in pool_arrays)
    if not nbytes:
        return {}
    res: dict = {"pool": [], "file": []}
    for _ in range(3):
        for lab, arrs in (("pool", pool_arrays), ("file", file_arrays)):
            if not arrs:
                continue
            t0 = time.perf_counter()
            for a in arrs:
                a.sum()
            res[lab].append(sum(a.nbytes for a in arrs) / (time.perf_counter() - t0) / GB)
    out = {"read_gbps_pool": statistics.median(res["pool"])}
    if res["file"]:
        out["read_gbps_file"] = statistics.median(res["file"])
    return out


def job_checksum(probe, algo: str, nbytes: int = CHECKSUM_BYTES):
    """Checksum speed over an ``nbytes`` buffer already in memory."""
    import numpy as np

    from bench.measure import Skip

    if algo == "crc32c":
        from pyaccel import _driver

        fn, impl = _driver.crc32c, _driver.crc32c_impl()
    elif algo == "xxh3_64":
        try:
            import xxhash
        except ImportError:
            raise Skip("the xxhash package is not installed (not a dependency)") from None
        fn, impl = xxhash.xxh3_64_intdigest, f"xxhash {xxhash.VERSION}"
    elif algo == "zlib_crc32":
        import zlib

        fn, impl = zlib.crc32, f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    else:
        raise ValueError(algo)
    pattern = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    buf = np.empty(nbytes, dtype=np.uint8)
    buf.reshape(-1, pattern.size)[:] = pattern  # every page touched, not all zeros
    fn(buf[:1 << 20])  # code and tables warm
    with probe.step():
        v = fn(buf)
    return {"bytes": nbytes, "impl": impl, "value": int(v)}


# ---------------------------------------------------------------------------
# the harness side


def _pool_sizes(rec) -> tuple[int, int]:
    """(pool bytes, catalog bytes per copy) that fit ``rec`` with room to spare:
    every tensor page-aligned (2 MiB for big ones), the graph record, and the
    catalog's ~110 bytes per tensor plus its name."""
    data = rec.weight_bytes + rec.tensor_count * 4096 + 16 * 2 * MiB
    graph = os.path.getsize(rec.path) if rec.data_path else 16 * MiB
    size = (data + graph + 64 * MiB + 2 * MiB - 1) & ~(2 * MiB - 1)
    catalog = (rec.tensor_count * 512 + 256 * 1024 + 4095) & ~4095
    return size, catalog


def _pool_path(model: str) -> str:
    p = os.path.join(POOL_DIR, f"pyaccel-bench-{os.getpid()}-{model}.pool")
    _POOLS.add(p)
    return p


def _remove_pool(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _POOLS.discard(path)


@atexit.register
def _remove_all_pools() -> None:
    for p in list(_POOLS):
        _remove_pool(p)


def _check_room(rec, size: int, ctx) -> None:
    """Skip when /dev/shm or the memory cannot take the pool (+ the source cached)."""
    from bench.measure import Skip

    if not os.path.isdir(POOL_DIR):
        raise Skip(f"{POOL_DIR} is missing (the pool goes on tmpfs)")
    st = os.statvfs(POOL_DIR)
    free = st.f_bavail * st.f_frsize
    if free < size + 256 * MiB:
        raise Skip(f"{POOL_DIR} has {free / MiB:.0f} MiB free, the pool needs {size / MiB:.0f} MiB")
    avail = ctx.measure.mem_available()
    need = size + rec.file_bytes + 1 * GiB
    if avail < need:
        raise Skip(f"needs ~{need / MiB:.0f} MiB of memory (pool + source in the page cache), "
                   f"{avail / MiB:.0f} MiB available")


def _ratio_note(value: float, base, target: float, better: str) -> bool:
    """Whether a figure misses against its baseline (for choosing notes)."""
    if base is None:
        return False
    r = value / base.value
    return r > target if better == "lower" else r < target


def _attach_reps(ctx) -> int:
    """Attach takes well under a millisecond, so a fresh process's scheduling
    noise is of its size: outside --quick, at least 11 fresh processes."""
    return ctx.repeat if ctx.quick else max(ctx.repeat, 11)


def _peak_figure(name: str, st, rec) -> "Figure":
    """Peak RSS while streaming, from the hot-load runs: VmHWM during load_model
    above the RSS just before it (the pool's own pages are not the loader's
    memory: the stream drops written chunks from its page tables, so only the
    chunks in flight and the staging buffers count)."""
    from bench.baselines import figure_from_stats

    used = st.samples[-1].extra.get("pool_used")
    note = (f"VmHWM during the hot loads above the RSS before load_model "
            f"({rec.weight_bytes / MiB:.0f} MiB streamed)")
    if st.median("peak_delta") > 64 * MiB and rec.tensor_count >= 1000 and used:
        note = (f"{rec.tensor_count} tensors of ~{rec.weight_bytes // rec.tensor_count} B, each "
                f"in its own 4 KiB page (pool used {used / MiB:.0f} MiB for "
                f"{rec.weight_bytes / MiB:.1f} MiB): sub-page writes stay mapped in the writer")
    return figure_from_stats(
        "stream_peak_rss", name, st, metric="peak_delta", target_value=64, better="lower",
        note=note,
        details={"streamed_bytes": rec.weight_bytes, "pool_used_bytes": used,
                 "rss_parts_before_mib": st.samples[-1].extra["rss_parts_before_mib"],
                 "rss_parts_after_mib": st.samples[-1].extra["rss_parts_after_mib"],
                 "peak_delta_mib_all": [m.peak_delta / MiB for m in st.samples]})


def _model_figures(name: str, rec, ctx, r) -> None:
    """Every per-model figure, in an order that keeps the pool's state right:
    streaming (fresh pool each time; the last leaves the model in), attach,
    sessions, latency, PSS; cold streaming last (it empties the page cache)."""
    from bench.baselines import figure_from_stats
    from bench.measure import HeldProcesses, Skip, repeat_isolated

    n = ctx.repeat
    pool = _pool_path(name)
    size, catalog = _pool_sizes(rec)
    wbytes = os.path.getsize(rec.weights_file)
    base_kw = {"path": rec.path, "pool_path": pool}
    load_kw = {**base_kw, "size": size, "catalog_size": catalog}
    ctx.log(f"[{name}] pool {pool} ({size / MiB:.0f} MiB, catalog {catalog // 1024} KiB)")
    try:
        _check_room(rec, size, ctx)
    except Skip as e:
        for fig, unit in (("hot_load", "GB/s"), ("cold_load", "GB/s"), ("attach", "s"),
                          ("session_noprepack", "s"), ("stream_peak_rss", "MiB")):
            r.skip(fig, name, unit, str(e))
        return

    try:
        # -- hot load --------------------------------------------------------
        for prefault in (False, True):
            fname = "hot_load_prefaulted" if prefault else "hot_load"

            def hot(prefault=prefault, fname=fname):
                if prefault and ctx.quick:
                    raise Skip("not in --quick")
                st = repeat_isolated("bench.pyaccel_figures:job_load",
                                     {**load_kw, "prefault": prefault,
                                      "breakdown": not prefault and not ctx.quick},
                                     n, warm=rec.files)
                det = {"loaded_bytes": st.samples[0].extra["nbytes"],
                       "pool_used_bytes": st.samples[-1].extra.get("pool_used"),
                       "info_direct_bytes": [m.extra["info_direct_bytes"] for m in st.samples],
                       "rss_parts_after_mib": st.samples[-1].extra["rss_parts_after_mib"],
                       "pool": pool, "pool_bytes": size,
                       "pool_state": "pages faulted in once before (MADV_POPULATE_WRITE)"
                                     if prefault else "as open_pool(create=True) leaves it "
                                     "(tmpfs: fallocated, not yet faulted/cleared)"}
                if prefault:
                    det["prefault_s_median"] = st.extra_median("prefault_s")
                scan = None
                if "scan_s" in st.samples[0].extra:
                    scan = st.extra_median("scan_s")
                    det["scan_s_median"] = scan
                f = figure_from_stats(fname, name, st, metric="throughput", nbytes=wbytes,
                                      baseline_name="read_hot", target_ratio=0.8, details=det)
                if prefault:
                    f.note = ("into a pool whose pages were faulted in before (populated up "
                              "front, or used and emptied): no page faults while streaming")
                elif _ratio_note(f.value, ctx.baseline("read_hot", name), 0.8, "higher"):
                    if scan is not None and scan > 0.5 * st.median():
                        f.note = (f"{rec.tensor_count} tensors: scanning the protobuf in Python "
                                  f"takes {scan * 1e3:.0f} of {st.median() * 1e3:.0f} ms")
                    elif rec.tensor_count >= 1000:
                        f.note = (f"{rec.tensor_count} tensors of {rec.weight_bytes / 1e3 / rec.tensor_count:.2g}"
                                  " kB: per-tensor costs (the Python protobuf scan) dominate")
                    else:
                        f.note = ("into a new pool: every 4 KiB tmpfs page is faulted in and "
                                  "cleared on first write; see hot_load_prefaulted")
                if prefault:
                    return [f]
                return [f, _peak_figure(name, st, rec)]
            r.run(fname, name, "GB/s", hot)

        # the pool now holds the model (left by the last streaming run)
        # -- attach ----------------------------------------------------------
        def attach():
            st = repeat_isolated("bench.pyaccel_figures:job_attach", base_kw, _attach_reps(ctx))
            f = figure_from_stats(
                "attach", name, st, baseline_name="onnx_load_hot", target_ratio=0.02,
                details={"info_seconds_median": st.extra_median("info_seconds"),
                         "weights_all_s_median": st.extra_median("weights_all_s"),
                         "tensors": rec.tensor_count})
            return [f]
        r.run("attach", name, "s", attach)

        # -- sessions: ready, and with the first result -------------------------
        # One worker per repetition: its step is attach + session + first
        # inference (batch 1), like ort_first_result_*; the session figure is the
        # attach + session part of the same step (perf_counter inside it), which
        # is what ort_session_* times from the file.
        for prepack in (False, True):
            tag = "prepack" if prepack else "noprepack"

            def session(prepack=prepack, tag=tag):
                st = repeat_isolated(
                    "bench.pyaccel_figures:job_session",
                    {**base_kw, "prepack": prepack, "first_run": True,
                     "input_name": rec.input_name, "input_shape": rec.input_shape}, n)
                ready = [m.extra["attach_s"] + m.extra["session_s"] for m in st.samples]
                f = Figure(
                    f"session_{tag}", statistics.median(ready), "s", name,
                    f"ort_session_{tag}", 0.2, "lower",
                    details={"n": len(ready), "time_s_median": statistics.median(ready),
                             "time_s_min": min(ready), "time_s_max": max(ready),
                             "time_s_all": ready,
                             "attach_s_median": st.extra_median("attach_s"),
                             "session_s_median": st.extra_median("session_s"),
                             "how": "attach + Model.session() in a fresh process (the part "
                                    f"before the first run of first_result_{tag})"})
                b = ctx.baseline(f"ort_session_{tag}", name)
                if _ratio_note(f.value, b, 0.2, "lower"):
                    if prepack:
                        f.note = ("prepacking copies and repacks every MatMul weight in each "
                                  "process whatever the source: the pool saves only the read")
                    elif rec.data_path:
                        f.note = (f"onnxruntime mmaps external data lazily and is ready in "
                                  f"{b.value * 1e3:.1f} ms, so 0.2x is {b.value * 200:.1f} ms; "
                                  f"see first_result_{tag}")
                    else:
                        f.note = (f"attach {st.extra_median('attach_s') * 1e3:.1f} ms + "
                                  f"session {st.extra_median('session_s') * 1e3:.1f} ms "
                                  f"(medians; {rec.tensor_count} tensors)")
                g = figure_from_stats(
                    f"first_result_{tag}", name, st, baseline_name=f"ort_first_result_{tag}",
                    note="" if prepack else
                    "attach + session + first inference (batch 1), timed together (no target)",
                    details={"attach_s_median": st.extra_median("attach_s"),
                             "session_s_median": st.extra_median("session_s")})
                return [f, g]
            r.run(f"session_{tag}", name, "s", session)

        # -- inference latency and bit-identity --------------------------------
        identical: dict[str, bool | None] = {}
        for prepack in (False, True):
            tag = "prepack" if prepack else "noprepack"

            def infer(prepack=prepack, tag=tag):
                kw = {"path": rec.path, "prepack": prepack, "input_name": rec.input_name,
                      "input_shape": rec.input_shape, "runs": ctx.latency_runs}
                # the figure's process, then (outside --quick) file and pool processes
                # interleaved (pool, file, file, pool: linear drift cancels) for a
                # paired ratio measured at the same time as the pool figure
                order = ["pool"] if ctx.quick else ["pool", "file", "file", "pool"]
                runs: dict = {"pool": [], "file": []}
                for k, which in enumerate(order):
                    if which == "pool":
                        mm = repeat_isolated("bench.pyaccel_figures:job_infer",
                                             {**kw, "pool_path": pool, "diag": k == 0}, 1)
                    else:
                        mm = repeat_isolated("bench.baselines:job_ort_infer", kw, 1)
                    runs[which].append(mm.samples[0].extra)
                ex = runs["pool"][0]
                figs = []
                for b in (1, 8):
                    base = ctx.baseline(f"ort_infer_b{b}_{tag}", name)
                    ref = base.details.get("output_sha256") if base else None
                    shas = {e[f"b{b}_output_sha256"] for e in runs["pool"]}
                    fshas = {e[f"b{b}_output_sha256"] for e in runs["file"]}
                    same_base = None if ref is None else shas == {ref}
                    same_file = None if not fshas else shas == fshas
                    checks = [v for v in (same_base, same_file) if v is not None]
                    identical[f"b{b}_{tag}"] = all(checks) if checks else None
                    paired = None
                    pm = [e[f"b{b}_ms_median"] for e in runs["pool"]]
                    fm = [e[f"b{b}_ms_median"] for e in runs["file"]]
                    value = statistics.median(pm)  # of the pool processes' medians
                    if fm:
                        paired = value / statistics.median(fm)
                    note = ""
                    if paired and base is not None and value / base.value > 1.03:
                        note = (f"pool and file sessions in interleaved fresh processes: "
                                f"{paired:.3f}x")
                        if "read_gbps_file" in ex:
                            note += (f"; reading the weights: {ex['read_gbps_pool']:.1f} GB/s "
                                     f"from the pool vs {ex['read_gbps_file']:.1f} GB/s from "
                                     f"the file's page cache")
                    figs.append(Figure(
                        f"infer_b{b}_{tag}", value, "ms", name,
                        f"ort_infer_b{b}_{tag}", 1.03, "lower", note=note,
                        details={"min_ms": ex[f"b{b}_ms_min"], "all_ms": ex[f"b{b}_ms_all"],
                                 "runs": ex["runs"], "batch": b, "input_seed": 0,
                                 "output_sha256": ex[f"b{b}_output_sha256"],
                                 "baseline_output_sha256": ref,
                                 "identical_to_baseline": same_base,
                                 "identical_to_interleaved_file_runs": same_file,
                                 "interleaved_order": order,
                                 "interleaved_pool_ms": pm, "interleaved_file_ms": fm,
                                 "paired_ratio": paired,
                                 "read_gbps_pool": ex.get("read_gbps_pool"),
                                 "read_gbps_file": ex.get("read_gbps_file"),
                                 "pool_dir": POOL_DIR}))
                return figs
            r.run(f"infer_{tag}", name, "ms", infer)
        if identical and all(v is None for v in identical.values()):
            r.skip("outputs_identical", name, "x", "no reference: neither the baselines' "
                   "output_sha256 nor interleaved file runs (--quick)")
        elif identical:
            bad = sorted(k for k, v in identical.items() if v is False)
            r.add(Figure("outputs_identical", 0.0 if bad else 1.0, "x", name,
                         target_value=1.0, better="higher",
                         note=("outputs differ from onnxruntime on the file: " + ", ".join(bad))
                         if bad else "",
                         details={"cases": identical,
                                  "how": "sha256 of the outputs (same input, same options) "
                                         "vs the baseline's output_sha256 and, outside "
                                         "--quick, vs the interleaved file runs"}))

        # -- 4 processes sharing the big model --------------------------------
        if name == "big_external":
            for prepack in (False, True):
                tag = "prepack" if prepack else "noprepack"

                def held(prepack=prepack, tag=tag):
                    from bench.measure import Skip

                    need = HELD * (rec.weight_bytes * (1 if prepack else 0) + 300 * MiB)
                    need += rec.weight_bytes
                    avail = ctx.measure.mem_available()
                    if avail < need * 1.3:
                        raise Skip(f"needs ~{need / MiB:.0f} MiB, {avail / MiB:.0f} MiB available")
                    with HeldProcesses("bench.pyaccel_figures:job_session",
                                       {**base_kw, "prepack": prepack, "run_batch": 1,
                                        "input_name": rec.input_name,
                                        "input_shape": rec.input_shape}, HELD) as h:
                        each = h.pss_each()
                        rss = h.rss_each()
                        parts = [ctx.measure.smaps_rollup(p) for p in h.pids]
                    total = sum(each) / MiB
                    det = {"processes": HELD, "pss_each_mib": [p / MiB for p in each],
                           "rss_each_mib": [p / MiB for p in rss],
                           "pss_shmem_each_mib": [p.get("Pss_Shmem", 0) / MiB for p in parts],
                           "pss_anon_each_mib": [p.get("Pss_Anon", 0) / MiB for p in parts],
                           "pss_file_each_mib": [p.get("Pss_File", 0) / MiB for p in parts],
                           "model_size_mib": rec.weight_bytes / MiB,
                           "session_s_each": [m.time_s for m in h.measurements]}
                    figs = []
                    if not prepack:
                        figs.append(Figure(
                            "pss_4proc", total, "MiB", name, "model_size", 1.3, "lower",
                            note="4 live processes: attach + session + 1 inference each; "
                                 "summed PSS incl. each interpreter", details=det))
                        figs.append(Figure("pss_4proc_vs_ort", total, "MiB", name,
                                           "ort_4proc_pss_noprepack", better="lower",
                                           details={"same_as": f"{name}/pss_4proc"}))
                    else:
                        figs.append(Figure(
                            "pss_4proc_prepack", total, "MiB", name, "ort_4proc_pss_prepack",
                            better="lower",
                            note="prepacked: each process holds its own packed copy (no target)",
                            details=det))
                    return figs
                r.run(f"pss_4proc_{tag}", name, "MiB", held)

        # -- cold load (drops the page cache) ----------------------------------
        can, why = ctx.can_drop_caches
        if not can:
            r.skip("cold_load", name, "GB/s", why)
        else:
            for prefault in (False, True):
                fname = "cold_load_prefaulted" if prefault else "cold_load"

                def cold(prefault=prefault, fname=fname):
                    if prefault and ctx.quick:
                        raise Skip("not in --quick")
                    st = repeat_isolated("bench.pyaccel_figures:job_load",
                                         {**load_kw, "prefault": prefault}, n, cold=True)
                    det = {"loaded_bytes": st.samples[0].extra["nbytes"],
                           "info_direct_bytes": [m.extra["info_direct_bytes"]
                                                 for m in st.samples]}
                    f = figure_from_stats(fname, name, st, metric="throughput", nbytes=wbytes,
                                          baseline_name="odirect_cold", target_ratio=0.9,
                                          details=det)
                    b = ctx.baseline("odirect_cold", name)
                    if prefault:
                        f.note = "into a pool whose pages were faulted in before"
                    elif b is None:
                        f.note = "no O_DIRECT baseline here; see cold_load_vs_read"
                    elif _ratio_note(f.value, b, 0.9, "higher"):
                        f.note = ("into a new pool (pages faulted in and cleared while "
                                  "streaming); see cold_load_prefaulted")
                    figs = [f]
                    if not prefault:
                        figs.append(Figure("cold_load_vs_read", f.value, f.unit, name,
                                           "read_cold", better="higher",
                                           details={"same_as": f"{name}/cold_load"}))
                    return figs
                r.run(fname, name, "GB/s", cold)
    finally:
        _remove_pool(pool)


def _big4_figures(models, ctx, r) -> None:
    """The 4 GiB big_external: attach time vs the 1 GiB one, peak RSS streaming it
    (and its hot-load throughput, informational)."""
    from bench.baselines import figure_from_stats
    from bench.measure import Skip, repeat_isolated

    name = "big_external_4gib"
    units = (("hot_load", "GB/s"), ("stream_peak_rss", "MiB"), ("attach", "s"))
    if "big_external" not in models:
        return
    why = None
    if ctx.size < 1.0:
        why = f"only at full size (--size >= 1; this run: {ctx.size:g})"
    else:
        d = os.path.join(ctx.workdir, "big_external-x4")
        have = os.path.isdir(d)
        disk = shutil.disk_usage(ctx.workdir).free
        if not have and disk < 10 * GiB:
            why = f"needs ~9 GiB of disk in {ctx.workdir} for the 4 GiB model, {disk / GiB:.1f} free"
        elif ctx.measure.mem_available() < 11 * GiB:
            why = (f"needs ~11 GiB of available memory (4 GiB pool + 4 GiB source cached), "
                   f"{ctx.measure.mem_available() / GiB:.1f} GiB available")
    if why:
        for fig, unit in units:
            r.skip(fig, name, unit, why)
        return
    t0 = time.time()
    rec = ctx.generate("big_external", 4.0)
    ctx.log(f"[{name}] {rec.weight_bytes / MiB:.0f} MiB in {rec.tensor_count} tensors "
            f"(generated or reused in {time.time() - t0:.0f} s)")
    pool = _pool_path(name)
    size, catalog = _pool_sizes(rec)
    try:
        try:
            _check_room(rec, size, ctx)
        except Skip as e:
            for fig, unit in units:
                r.skip(fig, name, unit, str(e))
            return
        load_kw = {"path": rec.path, "pool_path": pool, "size": size, "catalog_size": catalog}

        def hot():
            st = repeat_isolated("bench.pyaccel_figures:job_load", load_kw, ctx.repeat,
                                 warm=rec.files)
            f = figure_from_stats(
                "hot_load", name, st, metric="throughput",
                nbytes=os.path.getsize(rec.weights_file), baseline_name="big_external/read_hot",
                note="the 4 GiB model (16 tensors of 8192^2 fp32) into a new pool; vs the 1 GiB "
                     "file's read() (no target)",
                details={"loaded_bytes": st.samples[0].extra["nbytes"]})
            g = _peak_figure(name, st, rec)
            g.note = "the same model as big_external with 4x the bytes: " + g.note
            return [f, g]
        r.run("hot_load", name, "GB/s", hot)

        def attach():
            st = repeat_isolated("bench.pyaccel_figures:job_attach",
                                 {"path": rec.path, "pool_path": pool}, _attach_reps(ctx))
            return [figure_from_stats(
                "attach", name, st, baseline_name="big_external/attach", target_ratio=1.2,
                details={"info_seconds_median": st.extra_median("info_seconds"),
                         "bytes": rec.weight_bytes})]
        r.run("attach", name, "s", attach)
    finally:
        _remove_pool(pool)


def _checksum_figures(models, ctx, r) -> None:
    import importlib.util

    from bench.baselines import figure_from_stats
    from bench.measure import Skip, repeat_isolated

    mem = next((f"{m}/memcpy" for m in ("big_external", "embedded", "many_small")
                if ctx.baseline("memcpy", m)), None)
    for algo, note in (("crc32c", "pyaccel._driver.crc32c (the pool's checksum), 256 MiB in memory"),
                       ("xxh3_64", "informational: xxhash.xxh3_64 when installed"),
                       ("zlib_crc32", "informational: zlib.crc32 (CRC-32 without hardware help)")):
        def one(algo=algo, note=note):
            if algo == "xxh3_64" and importlib.util.find_spec("xxhash") is None:
                raise Skip("the xxhash package is not installed (not a dependency)")
            st = repeat_isolated("bench.pyaccel_figures:job_checksum", {"algo": algo}, ctx.repeat)
            f = figure_from_stats(f"checksum_{algo}", None, st, metric="throughput",
                                  nbytes=CHECKSUM_BYTES, baseline_name=mem,
                                  note=f"{note} ({st.samples[0].extra['impl']}); vs memcpy",
                                  details={"impl": st.samples[0].extra["impl"]})
            return [f]
        r.run(f"checksum_{algo}", None, "GB/s", one)


def figures(models, ctx) -> list[Figure]:
    """Every pyaccel figure of issue 4 (see the module docstring and bench/README.md)."""
    from bench.baselines import _Runner

    try:
        import pyaccel._driver  # noqa: F401  (fail early, with the reason, if not built)
    except ImportError as e:
        from bench.measure import Skip

        raise Skip(f"pyaccel is not built ({e}); run `make`") from None
    r = _Runner(ctx, lambda _name: True)
    try:
        for name, rec in models.items():
            _model_figures(name, rec, ctx, r)
        _big4_figures(models, ctx, r)
        _checksum_figures(models, ctx, r)
    finally:
        _remove_all_pools()
    return r.figs
