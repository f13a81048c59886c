"""Measurement helpers shared by every figure (baselines and pyaccel's).

Every measured step runs in a FRESH Python subprocess, so that imports, the
page cache state, RSS and PSS are honest.  A *job* is a plain function
``job(probe, **kwargs)`` importable as ``"package.module:function"``; it does its
set-up (imports, buffers), then wraps exactly the step to be measured in
``with probe.step(): ...``, and may return a dict of extra JSON-able values::

    def job_read(probe, path, nbytes):
        buf = bytearray(nbytes)            # set-up, not measured
        with probe.step():                 # measured: wall time, peak RSS
            with open(path, "rb", buffering=0) as f:
                f.readinto(buf)
        return {"bytes": nbytes}

    m = run_isolated("bench.baselines:job_read", {"path": p, "nbytes": n})
    m.time_s, m.peak_rss, m.rss_before, m.pss, m.extra

What the worker records (bytes unless stated):

``rss_start``   VmRSS of the bare interpreter when the worker starts
``rss_before``  VmRSS right before the step (the "interpreter baseline" after set-up)
``peak_rss``    VmHWM after the step; VmHWM is reset (``/proc/self/clear_refs`` = 5)
                right before the step, so it is the peak *during* the step
``peak_delta``  ``peak_rss - rss_before``: what the step added at its peak
``rss_after``   VmRSS right after the step
``pss``         ``Pss`` from ``/proc/self/smaps_rollup`` right after the step
``time_s``      wall time of the step (``time.perf_counter``)

``cold=True`` drops the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``,
root only) right before the step, after the set-up.  ``warm=[paths]`` reads
those files through once during set-up so that the step finds them in the page
cache (skipped when ``cold``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import mmap
import os
import select
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_TIMEOUT = 900.0


class MeasureError(RuntimeError):
    """A measured job failed in its subprocess (the message carries its traceback)."""


class Skip(Exception):
    """Raised by a job (or a check) to report a figure as skipped, with the reason."""


# ---------------------------------------------------------------------------
# /proc readers


def _status_kib(key: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def vm_rss(pid: int | str = "self") -> int:
    """Resident set size in bytes."""
    return _status_kib("VmRSS", pid) * 1024


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident set size (high-water mark) in bytes."""
    return _status_kib("VmHWM", pid) * 1024


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` as {field: bytes}."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                out[parts[0][:-1]] = int(parts[1]) * 1024
    return out


def pss(pid: int | str = "self") -> int:
    """Proportional set size in bytes."""
    return smaps_rollup(pid)["Pss"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------
# page cache control


def can_drop_caches() -> tuple[bool, str]:
    """Whether cold figures can be measured here, and why not."""
    if os.geteuid() != 0:
        return False, "not root: cannot write /proc/sys/vm/drop_caches"
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return False, "/proc/sys/vm/drop_caches is not writable (read-only /proc/sys?)"
    return True, "root: sync; echo 3 > /proc/sys/vm/drop_caches before each cold step"


def drop_caches() -> None:
    """Write back dirty pages and drop the page cache, dentries and inodes (root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def odirect_supported(path: str) -> tuple[bool, str]:
    """Whether ``path``'s filesystem accepts O_DIRECT reads (tmpfs does not)."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return False, "os.O_DIRECT not available on this platform"
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError as e:
        return False, f"open(O_DIRECT) failed on {path}: {os.strerror(e.errno)}"
    try:
        buf = mmap.mmap(-1, 1 << 20)
        try:
            os.readv(fd, [buf])
        except OSError as e:
            return False, f"O_DIRECT read failed on {path}: {os.strerror(e.errno)}"
        finally:
            buf.close()
    finally:
        os.close(fd)
    return True, "supported"


def warm_file(path: str, chunk: int = 8 << 20) -> int:
    """Read ``path`` through once so that it sits in the page cache. Returns bytes read."""
    buf = bytearray(chunk)
    n = 0
    with open(path, "rb", buffering=0) as f:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            k = f.readinto(buf)
            if not k:
                return n
            n += k


# ---------------------------------------------------------------------------
# the worker side


class Probe:
    """Handed to a job inside the worker; brackets the measured step."""

    def __init__(self, cold: bool = False):
        self.cold = cold
        self.rss_start = vm_rss()
        self.result: dict | None = None
        self.kept: list = []
        self.extra: dict = {}

    def keep(self, *objs) -> None:
        """Keep objects alive until the worker exits (e.g. a session held for PSS)."""
        self.kept.extend(objs)

    @contextlib.contextmanager
    def step(self):
        if self.result is not None:
            raise RuntimeError("probe.step() may be used once per job")
        if self.cold:
            drop_caches()
        hwm_reset = reset_peak_rss()
        rss_before = vm_rss()
        t0 = time.perf_counter()
        yield self
        t1 = time.perf_counter()
        peak = vm_hwm()
        self.result = {
            "time_s": t1 - t0,
            "rss_start": self.rss_start,
            "rss_before": rss_before,
            "peak_rss": peak,
            "peak_delta": peak - rss_before,
            "rss_after": vm_rss(),
            "pss": pss(),
            "hwm_reset": hwm_reset,
            "cold": self.cold,
        }


def _resolve(target: str):
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _worker_main(result_fd: int) -> int:
    job = json.loads(sys.stdin.readline())
    probe = Probe(cold=job.get("cold", False))
    out = os.fdopen(result_fd, "w")
    try:
        if job.get("warm") and not probe.cold:
            for p in job["warm"]:
                warm_file(p)
        fn = _resolve(job["target"])
        extra = fn(probe, **job.get("kwargs", {})) or {}
        if probe.result is None:
            raise RuntimeError(f"{job['target']} never entered probe.step()")
        res = dict(probe.result)
        res["extra"] = {**probe.extra, **extra}
        res["pss_end"] = pss()
        res["pid"] = os.getpid()
    except Skip as e:
        res = {"skip": str(e)}
    except BaseException:  # noqa: BLE001 - reported to the parent
        res = {"error": traceback.format_exc()}
    out.write(json.dumps(res) + "\n")
    out.flush()
    if job.get("hold") and "error" not in res and "skip" not in res:
        sys.stdin.read()  # until the parent closes our stdin
    out.close()
    return 0


# ---------------------------------------------------------------------------
# the parent side


@dataclass
class Measurement:
    time_s: float
    rss_start: int
    rss_before: int
    peak_rss: int
    peak_delta: int
    rss_after: int
    pss: int
    pss_end: int
    hwm_reset: bool
    cold: bool
    pid: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Worker:
    def __init__(self, target: str, kwargs: dict | None, *, cold: bool, warm, hold: bool,
                 env: dict | None):
        rfd, wfd = os.pipe()
        e = dict(os.environ)
        e["PYTHONPATH"] = _REPO_ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        e.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        if env:
            e.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.measure", "--worker", str(wfd)],
            stdin=subprocess.PIPE, pass_fds=(wfd,), env=e, cwd=_REPO_ROOT,
        )
        os.close(wfd)
        self.rfile = os.fdopen(rfd, "r")
        job = {"target": target, "kwargs": kwargs or {}, "cold": cold,
               "warm": list(warm or []), "hold": hold}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        if not hold:
            self.proc.stdin.close()

    def result(self, timeout: float) -> Measurement:
        ready, _, _ = select.select([self.rfile], [], [], timeout)
        if not ready:
            self.kill()
            raise MeasureError(f"worker {self.proc.pid} timed out after {timeout:.0f} s")
        line = self.rfile.readline()
        if not line:
            rc = self.proc.wait()
            raise MeasureError(f"worker {self.proc.pid} died (exit status {rc}) without a result")
        res = json.loads(line)
        if "skip" in res:
            self.release()
            raise Skip(res["skip"])
        if "error" in res:
            self.release()
            raise MeasureError(res["error"])
        return Measurement(**res)

    def release(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if not self.proc.stdin.closed:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.rfile.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        self.rfile.close()


def run_isolated(target: str, kwargs: dict | None = None, *, cold: bool = False,
                 warm=None, timeout: float = _DEFAULT_TIMEOUT,
                 env: dict | None = None) -> Measurement:
    """Run ``job(probe, **kwargs)`` in a fresh interpreter and return its Measurement.

    Raises :class:`Skip` if the job skipped itself, :class:`MeasureError` if it failed."""
    if cold:
        ok, why = can_drop_caches()
        if not ok:
            raise Skip(why)
    w = _Worker(target, kwargs, cold=cold, warm=warm, hold=False, env=env)
    try:
        return w.result(timeout)
    finally:
        if w.proc.returncode is None:
            w.release()


@dataclass
class Stats:
    """N repetitions of one job (each in its own fresh process)."""

    samples: list[Measurement]

    def _vals(self, attr: str) -> list[float]:
        return [getattr(m, attr) for m in self.samples]

    def median(self, attr: str = "time_s") -> float:
        return statistics.median(self._vals(attr))

    def min(self, attr: str = "time_s") -> float:
        return min(self._vals(attr))

    def max(self, attr: str = "time_s") -> float:
        return max(self._vals(attr))

    def extra_median(self, key: str) -> float:
        return statistics.median(m.extra[key] for m in self.samples)

    def to_dict(self) -> dict:
        return {"n": len(self.samples),
                "time_s": {"median": self.median(), "min": self.min(), "max": self.max()},
                "peak_delta": self.median("peak_delta"), "peak_rss": self.median("peak_rss"),
                "rss_before": self.median("rss_before"), "pss": self.median("pss")}


def repeat_isolated(target: str, kwargs: dict | None = None, n: int = 5, *,
                    cold: bool = False, warm=None, timeout: float = _DEFAULT_TIMEOUT,
                    env: dict | None = None) -> Stats:
    """Run the job ``n`` times, each in a fresh process; median and min via :class:`Stats`."""
    return Stats([run_isolated(target, kwargs, cold=cold, warm=warm, timeout=timeout, env=env)
                  for _ in range(max(1, n))])


class HeldProcesses:
    """Start ``k`` workers one after the other and keep them all alive at once.

    ::

        with HeldProcesses("bench.baselines:job_ort_session", kw, k=4) as held:
            total = held.pss_total()        # summed PSS of the k live processes
            held.measurements               # each one's Measurement (time of its step, ...)
    """

    def __init__(self, target: str, kwargs: dict | None = None, k: int = 4, *,
                 warm=None, timeout: float = _DEFAULT_TIMEOUT, env: dict | None = None):
        self.target, self.kwargs, self.k = target, kwargs, k
        self.warm, self.timeout, self.env = warm, timeout, env
        self.workers: list[_Worker] = []
        self.measurements: list[Measurement] = []

    def __enter__(self) -> "HeldProcesses":
        try:
            for _ in range(self.k):
                w = _Worker(self.target, self.kwargs, cold=False, warm=self.warm, hold=True,
                            env=self.env)
                self.workers.append(w)
                self.measurements.append(w.result(self.timeout))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def pss_each(self) -> list[int]:
        return [pss(p) for p in self.pids]

    def pss_total(self) -> int:
        return sum(self.pss_each())

    def rss_each(self) -> list[int]:
        return [vm_rss(p) for p in self.pids]

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            if w.proc.returncode is None:
                w.release()
        self.workers = []


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        # run the worker from the imported module, not from __main__, so that jobs
        # raising bench.measure.Skip are caught as the same class
        from bench.measure import _worker_main as _main

        sys.exit(_main(int(sys.argv[2])))
    print("usage: python -m bench.measure --worker FD  (internal)", file=sys.stderr)
    sys.exit(2)


__all__ = [
    "Measurement", "MeasureError", "Skip", "Stats", "HeldProcesses", "Probe",
    "run_isolated", "repeat_isolated", "drop_caches", "can_drop_caches", "odirect_supported",
    "warm_file", "vm_rss", "vm_hwm", "pss", "smaps_rollup", "reset_peak_rss", "mem_available",
]
