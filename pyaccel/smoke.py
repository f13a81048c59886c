"""The hardware smoke test: ``scripts/smoke-test`` and ``pyaccel smoke-test``.

For one device or file (or the default pool location) it runs seven steps and
prints PASS or FAIL for each, with figures; ``--json`` prints one document
instead.  See :data:`DESCRIPTION` for the steps and :data:`EPILOG` for the
target, cleanup and exit-status rules.

It drives the public API (:func:`pyaccel.open_pool`, :func:`pyaccel.load_model`)
and, for the raw pattern, persistence and bandwidth steps, the binding's
mapping object ``pyaccel._driver._Map`` and its ``crc32c``: those steps test
the memory itself, below any pool.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run", "main", "EXIT_PASS", "EXIT_FAIL", "EXIT_REFUSED"]

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_REFUSED = 2

MiB = 1 << 20
#: Bytes at the start of an existing target checked for a pool or other data.
CHECK_BYTES = 8 * MiB
#: Bytes zeroed at the start of a pre-existing target by the cleanup step.
WIPE_BYTES = 1 * MiB
#: Smallest test region (a pool needs 4 MiB, plus room for the model).
MIN_SIZE = 16 * MiB
#: Pattern generation and verification go this many bytes at a time (bounded memory).
CHUNK = 8 * MiB
#: Pool superblock magic (primary copy at 0, backup at 4096).
POOL_MAGIC = b"PYACCEL-POOL-v1"
#: The test model's name in the pool.
MODEL_NAME = "pyaccel-smoke-test"
_ADDR_KEY = 0x9E3779B97F4A7C15

DESCRIPTION = """\
Hardware smoke test of a device or file for pyaccel.  Steps, each PASS or FAIL with figures:

  1 classify     kind, size, alignment, NUMA node, durability granularity, persistence
  2 safety       refuse a target that holds a pyaccel pool or other non-zero data in its
                 first 8 MiB (exit 2) unless --force; always refuse a mounted/held block device
  3 patterns     write seeded random + address-dependent patterns through a mapping and verify
                 them byte for byte (and by CRC32C) from a second process
  4 persistence  close, re-open and re-check; read back through pread() too (block devices:
                 buffered and O_DIRECT, so the bytes reached the device)
  5 bandwidth    write (into populated memory), read and copy GB/s; persisted-write GB/s
  6 model        create a pool there, load a generated ONNX model (MatMul/Add layers, external
                 data), check weights and inference outputs bit-identical to onnxruntime on the file
  7 cleanup      remove what it created"""

EPILOG = """\
target:
  a device (/dev/daxX.Y, /dev/loopN, /dev/nullbN, /dev/ramN) or a file is tested in place;
  a directory (e.g. a hugetlbfs mount) gets a scratch file inside it; no target: the default
  pool location -- its device, or for a file pool a scratch file beside it (the pool itself is
  never touched).

cleanup:
  a file the test created is deleted; a target that existed before (a device, an existing file)
  keeps its size but its first MiB is zeroed, so it no longer looks like a pool; --keep leaves
  the test pool in place instead (inspect it with `pyaccel ls --pool TARGET`).

exit status: 0 every step passed, 1 a step failed, 2 refused (the target holds data) or bad usage."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The smoke test's options (shared by ``scripts/smoke-test`` and ``pyaccel smoke-test``)."""
    p.add_argument("target", metavar="DEVICE_OR_PATH", nargs="?", default=None,
                   help="device, file or directory to test (default: the default pool location)")
    p.add_argument("--size", type=_size_arg, default=256 * MiB,
                   help="bytes to test (a file is made this big; a device is tested up to this much) "
                        "(default 256M)")
    p.add_argument("--force", action="store_true",
                   help="test even a target that holds a pool or other data (destroys it)")
    p.add_argument("--keep", action="store_true", help="leave the test pool in place")
    p.add_argument("--seed", type=int, default=None, help="pattern seed (default: random, printed)")
    if not any(a.dest == "json" for a in p._actions):
        p.add_argument("--json", action="store_true", help="print one JSON document")
    if not any(a.dest == "debug" for a in p._actions):
        p.add_argument("--debug", action="store_true", help="tracebacks for failed steps")


def _size_arg(text: str) -> int:
    from .config import ConfigError, parse_size

    try:
        v = parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.detail) from None
    if v < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is too small: at least {MIN_SIZE >> 20}M")
    return v


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class StepFailed(Exception):
    """A step's check failed: ``detail`` says what, ``figures`` what was measured."""

    def __init__(self, detail: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.figures = figures or {}


class Refused(StepFailed):
    """The target must not be touched."""


@dataclass
class Step:
    number: int
    name: str
    status: str = "SKIP"  # PASS, FAIL, REFUSED, SKIP
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Target:
    path: str  # what is mapped / pooled
    given: str | None  # what the user named
    device: bool  # block or character device (tested in place, never deleted)
    existed: bool  # the path existed before the test
    created: bool = False  # this test created the file (cleanup deletes it)
    note: str = ""


def _gbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 2) if seconds > 0 else 0.0


def _hs(n: int) -> str:
    from .cli import human_size

    return human_size(n)


def _resolve_target(given: str | None) -> Target:
    """The path to test for what the user named (see EPILOG)."""
    note = ""
    if given is None:
        from .discover import default_pool

        choice = default_pool()
        if choice.needs_create or _is_device(choice.path):
            return Target(choice.path, None, True, True, note=f"the default pool location ({choice.reason})")
        given_dir = os.path.dirname(choice.path) or "."
        note = f"a scratch file beside the default pool {choice.path}"
    elif os.path.isdir(given):
        given_dir = given
        note = f"a scratch file in {given}"
    else:
        dev = _is_device(given)
        return Target(given, given, dev, os.path.exists(given))
    path = os.path.join(given_dir, f".pyaccel-smoke-{os.getpid()}")
    return Target(path, given, False, False, note=note)


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def _pattern(kind: str, seed: int, off: int, n: int) -> Any:
    """Chunk of the expected bytes at byte offset ``off`` (a multiple of 8) of the region.

    ``random``: bytes from a generator seeded with (seed, off // CHUNK);
    ``address``: each 8-byte word holds its own byte offset XOR a seed-derived key,
    so that two addresses aliasing each other show up as a mismatch.
    """
    import numpy as np

    if kind == "random":
        rng = np.random.default_rng([seed, off // CHUNK])
        return np.frombuffer(rng.bytes(n), dtype=np.uint8)
    key = np.uint64((seed * _ADDR_KEY) & 0xFFFFFFFFFFFFFFFF)
    words = np.arange(off, off + n, 8, dtype=np.uint64)
    words ^= key
    return words.view(np.uint8)


def _layout(length: int, align: int) -> list[tuple[str, int, int]]:
    """The two pattern regions: (kind, offset, length); the random one first."""
    half = (length // 2) // max(align, 4096) * max(align, 4096)
    return [("random", 0, half), ("address", half, length - half)]


def _chunks(off: int, n: int) -> Any:
    end = off + n
    # random chunks are keyed by off // CHUNK: keep chunk boundaries on multiples of CHUNK
    while off < end:
        nxt = min(end, (off // CHUNK + 1) * CHUNK)
        yield off, nxt - off
        off = nxt


def _verify_region(view: Any, seed: int, layout: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
    """Compare a mapping's bytes with the patterns: mismatching bytes, first bad offset, CRCs."""
    import numpy as np

    from ._driver import crc32c

    out: dict[str, Any] = {"bad_bytes": 0, "first_bad": None}
    for kind, off, n in layout:
        crc = 0
        for o, k in _chunks(off, n):
            got = view[o:o + k]
            want = _pattern(kind, seed, o, k)
            diff = np.count_nonzero(got != want)
            if diff:
                out["bad_bytes"] += int(diff)
                if out["first_bad"] is None:
                    out["first_bad"] = o + int(np.flatnonzero(got != want)[0])
            crc = crc32c(got, crc)
        out[f"crc32c_{kind}"] = f"{crc:08x}"
    return out


def _child_verify(spec: dict[str, Any]) -> int:
    """The second process of step 3: map read-only, compare byte for byte, print JSON."""
    import numpy as np

    from ._driver import MAP_READONLY, _Map

    t0 = time.perf_counter()
    m = _Map(spec["path"], 0, spec["length"], MAP_READONLY)
    try:
        view = np.frombuffer(m, dtype=np.uint8)
        res = _verify_region(view, spec["seed"], spec["layout"])
        del view
    finally:
        m.close()
    res["pid"] = os.getpid()
    res["seconds"] = time.perf_counter() - t0
    print(json.dumps(res))
    return 0


def _child_env() -> dict[str, str]:
    """The environment for the verifying process: this pyaccel importable first."""
    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class SmokeTest:
    """One run of the smoke test."""

    def __init__(self, args: argparse.Namespace, emit: Callable[[Step], None] | None = None) -> None:
        self.args = args
        self.size: int = args.size
        self.force: bool = args.force
        self.keep: bool = args.keep
        self.seed: int = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.emit = emit
        self.target = _resolve_target(args.target)
        self.info: dict[str, Any] = {}
        self.length = 0  # bytes of the pattern region (the mapping)
        self.align = 4096
        self.layout: list[tuple[str, int, int]] = []
        self.crcs: dict[str, str] = {}
        self.tmpdir: str | None = None
        self.pool_made = False
        self.steps = [Step(i + 1, n) for i, n in enumerate(
            ("classify", "safety", "patterns", "persistence", "bandwidth", "model", "cleanup"))]

    # -- driver ------------------------------------------------------------

    def run(self) -> int:
        funcs = [self.classify, self.safety, self.patterns, self.persistence, self.bandwidth, self.model]
        stop = ""
        try:
            for step, fn in zip(self.steps, funcs):
                if stop:
                    step.detail = f"skipped ({stop})"
                    self._done(step)
                    continue
                if not self._run_step(step, fn) and step.name in ("classify", "safety", "patterns"):
                    # nothing after these can be trusted (or may be done)
                    stop = f"step {step.number} {'refused the target' if step.status == 'REFUSED' else 'failed'}"
        finally:
            # cleanup runs even on Ctrl-C (KeyboardInterrupt goes on once it is done)
            self._run_step(self.steps[-1], self.cleanup)
        if any(s.status == "REFUSED" for s in self.steps):
            return EXIT_REFUSED
        if any(s.status == "FAIL" for s in self.steps):
            return EXIT_FAIL
        return EXIT_PASS

    def _run_step(self, step: Step, fn: Callable[[], tuple[str, dict[str, Any]]]) -> bool:
        t0 = time.perf_counter()
        try:
            step.detail, step.figures = fn()
            step.status = "PASS"
        except KeyboardInterrupt:
            step.status, step.detail = "FAIL", "interrupted"
            step.seconds = round(time.perf_counter() - t0, 4)
            self._done(step)
            raise
        except Refused as e:
            step.status, step.detail, step.figures = "REFUSED", e.detail, e.figures
        except StepFailed as e:
            step.status, step.detail, step.figures = "FAIL", e.detail, e.figures
        except Exception as e:  # any error fails the step, with its message
            if getattr(self.args, "debug", False):
                import traceback

                traceback.print_exc()
            from .cli import _error_text

            step.status, step.detail = "FAIL", _error_text(e)
        step.seconds = round(time.perf_counter() - t0, 4)
        self._done(step)
        return step.status == "PASS"

    def _done(self, step: Step) -> None:
        if self.emit is not None:
            self.emit(step)

    def _map(self, flags: int, length: int | None = None) -> Any:
        from ._driver import _Map

        return _Map(self.target.path, 0, self.length if length is None else length, flags)

    # -- 1 classify --------------------------------------------------------

    def classify(self) -> tuple[str, dict[str, Any]]:
        from ._driver import MAP_CREATE, MAP_EXCL, MAP_READONLY, _Map, classify

        t = self.target
        sync, fallback = False, ""
        if not t.existed:
            # a new file: create it now (nothing to lose), so that the C core classifies it
            t.created = True  # cleanup deletes it, even if mapping it fails half way
            m = _Map(t.path, 0, self.size, MAP_CREATE | MAP_EXCL)
        elif t.device:
            m = _Map(t.path, 0, 0, MAP_READONLY)
        else:
            m = None  # an existing file: maybe empty or of an unaligned size; stat is enough
        if m is None:
            src = classify(t.path)
        else:
            try:
                src = m.source
                sync, fallback = m.sync, m.fallback
            finally:
                m.close()
        self.info = dict(src)
        self.align = max(int(src["align"]) or 4096, 4096)
        if t.device:
            total = int(src["size"])
            length = min(self.size, total) // self.align * self.align
            if length < MIN_SIZE:
                raise StepFailed(f"{t.path} has {_hs(total)}: the smoke test needs at least {_hs(MIN_SIZE)}",
                                 {"size": total})
        else:
            length = -(-self.size // self.align) * self.align
        self.length = length
        self.layout = _layout(length, self.align)
        node = src["numa_node"]
        figs = {
            "path": t.path,
            "kind": src["kind"],
            "device_name": src["devname"] or None,
            "size": int(src["size"]),
            "test_bytes": length,
            "align": self.align,
            "numa_node": None if node < 0 else node,
            "target_node": None if src["target_node"] < 0 else src["target_node"],
            "granularity": src["granularity"],
            "persistent": bool(src["persistent"]),
            "map_sync": bool(sync),
            "fallback": fallback or None,
            "created": t.created,
            "seed": self.seed,
        }
        detail = (f"{src['kind']}{' ' + src['devname'] if src['devname'] else ''}, "
                  f"{_hs(int(src['size']))}, align {_hs(self.align)}, "
                  f"NUMA node {figs['numa_node'] if figs['numa_node'] is not None else '-'}, "
                  f"granularity {src['granularity']}, "
                  f"{'persistent' if src['persistent'] else 'not persistent'}"
                  f"{', MAP_SYNC' if sync else ''}; testing {_hs(length)}"
                  f"{' (new file)' if t.created else ''}")
        if fallback:
            detail += f"; fallback: {fallback}"
        return detail, figs

    # -- 2 safety ------------------------------------------------------------

    def safety(self) -> tuple[str, dict[str, Any]]:
        import numpy as np

        t = self.target
        if t.created or (not t.device and os.path.getsize(t.path) == 0):
            return "new (or empty) file: nothing to lose", {"holds": "nothing", "checked_bytes": 0}
        figs: dict[str, Any] = {}
        if t.device and stat.S_ISBLK(os.stat(t.path).st_mode):
            in_use = _block_in_use(t.path)
            if in_use:
                raise Refused(f"refusing to touch {t.path}: {in_use} (never overwritten, even with --force)",
                              {"holds": "in use", "in_use": in_use})
        head = _read_head(t.path, CHECK_BYTES)
        n = len(head)
        is_pool = POOL_MAGIC in (bytes(head[:len(POOL_MAGIC)]), bytes(head[4096:4096 + len(POOL_MAGIC)]))
        nz = np.flatnonzero(head)
        first = int(nz[0]) if len(nz) else None
        del head, nz
        figs["checked_bytes"] = n
        if is_pool:
            what = "a pyaccel pool" + self._pool_summary()
            figs["holds"] = "pool"
        elif first is not None:
            what = f"data (first non-zero byte at offset {first} of the first {_hs(n)})"
            figs["holds"] = "data"
            figs["first_nonzero"] = first
        else:
            return f"first {_hs(n)} are zero: nothing to lose", dict(figs, holds="nothing")
        if not self.force:
            raise Refused(f"refusing to touch {t.path}: it holds {what}; give --force to overwrite it "
                          "(this destroys what it holds)", figs)
        return f"holds {what}; overwriting it (--force)", figs

    def _pool_summary(self) -> str:
        from .pool import open_pool

        try:
            with open_pool(self.target.path, readonly=True, recover=True) as pool:
                st = pool.status()
        except Exception:  # damaged or newer: still a pool as far as safety goes
            return ""
        return f" ({st.n_models} models, {_hs(st.size)})"

    # -- 3 patterns ----------------------------------------------------------

    def patterns(self) -> tuple[str, dict[str, Any]]:
        from ._driver import MAP_CREATE, MAP_POPULATE, crc32c

        t = self.target
        flags = MAP_POPULATE | (0 if t.device else MAP_CREATE)
        t0 = time.perf_counter()
        m = self._map(flags)
        t_map = time.perf_counter() - t0
        try:
            self.length = m.length
            self.layout = _layout(self.length, self.align)
            t0 = time.perf_counter()
            for kind, off, n in self.layout:
                crc = 0
                for o, k in _chunks(off, n):
                    chunk = _pattern(kind, self.seed, o, k)
                    m.write(o, chunk)  # pa_map_memcpy: copies and persists
                    crc = crc32c(chunk, crc)
                self.crcs[kind] = f"{crc:08x}"
            m.persist()
            t_write = time.perf_counter() - t0
        finally:
            m.close()
        spec = {"path": t.path, "length": self.length, "seed": self.seed, "layout": self.layout}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pyaccel.smoke", "--child-verify", json.dumps(spec)],
                           capture_output=True, text=True, env=_child_env(), timeout=600)
        t_child = time.perf_counter() - t0
        if r.returncode:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise StepFailed(f"the verifying process failed (exit {r.returncode}): {tail}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        figs = {
            "bytes": self.length,
            "random_bytes": self.layout[0][2],
            "address_bytes": self.layout[1][2],
            "seed": self.seed,
            "crc32c_random": self.crcs["random"],
            "crc32c_address": self.crcs["address"],
            "map_populate_s": round(t_map, 4),
            "write_s": round(t_write, 4),
            "verify_pid": res["pid"],
            "verify_s": round(res["seconds"], 4),
            "verify_process_s": round(t_child, 4),
            "bad_bytes": res["bad_bytes"],
            "first_bad": res["first_bad"],
        }
        crc_ok = all(res[f"crc32c_{k}"] == self.crcs[k] for k in self.crcs)
        if res["bad_bytes"] or not crc_ok:
            raise StepFailed(f"process {res['pid']} read back {res['bad_bytes']} wrong bytes, first at offset "
                             f"{res['first_bad']}; crc32c random {res['crc32c_random']} (wrote "
                             f"{self.crcs['random']}), address {res['crc32c_address']} (wrote "
                             f"{self.crcs['address']})", figs)
        return (f"{_hs(self.length)} written (seeded random {self.seed} + address-dependent) in "
                f"{t_write:.2f} s, verified byte for byte by process {res['pid']}: crc32c "
                f"{self.crcs['random']}/{self.crcs['address']} match"), figs

    # -- 4 persistence --------------------------------------------------------

    def persistence(self) -> tuple[str, dict[str, Any]]:
        import numpy as np

        from ._driver import MAP_READONLY, crc32c

        t = self.target
        m = self._map(MAP_READONLY)
        try:
            view = np.frombuffer(m, dtype=np.uint8)
            res = _verify_region(view, self.seed, self.layout)
            del view
        finally:
            m.close()
        figs: dict[str, Any] = {"reopen_bad_bytes": res["bad_bytes"], "persistent_media": bool(self.info["persistent"])}
        if res["bad_bytes"] or any(res[f"crc32c_{k}"] != v for k, v in self.crcs.items()):
            raise StepFailed(f"after close and re-open: {res['bad_bytes']} wrong bytes, first at offset "
                             f"{res['first_bad']}", figs)
        parts = ["close + re-open: all bytes match"]
        kind = self.info["kind"]
        is_blk = t.device and stat.S_ISBLK(os.stat(t.path).st_mode)
        if kind == "devdax":
            parts.append("pread: n/a (device-DAX has no read())")
            figs["pread"] = None
        else:
            modes = ["buffered"] + (["direct"] if is_blk else [])
            figs["pread"] = {}
            for mode in modes:
                try:
                    crcs, secs = _pread_crcs(t.path, self.layout, direct=mode == "direct")
                except OSError as e:
                    if mode == "direct" and e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                        figs["pread"][mode] = "unsupported"
                        parts.append("O_DIRECT: not supported here")
                        continue
                    raise
                ok = crcs == self.crcs
                figs["pread"][mode] = {"match": ok, "GBps": _gbps(self.length, secs)}
                if not ok:
                    raise StepFailed(f"{mode} pread of {t.path} does not match what was written through the "
                                     f"mapping: crc32c {crcs} != {self.crcs}", figs)
                parts.append(f"{'O_DIRECT' if mode == 'direct' else 'buffered'} pread of {t.path} matches")
        if not self.info["persistent"]:
            parts.append("(not persistent media: the contents outlive processes, not a reboot)")
        # a cross-check of the CRC routine itself on the expected bytes
        figs["crc32c_impl_check"] = f"{crc32c(b'123456789'):08x}"
        if figs["crc32c_impl_check"] != "e3069283":
            raise StepFailed("crc32c of '123456789' is not e3069283: the checksum routine is broken", figs)
        return "; ".join(parts), figs

    # -- 5 bandwidth ----------------------------------------------------------

    def bandwidth(self) -> tuple[str, dict[str, Any]]:
        from ._driver import MAP_POPULATE

        m = self._map(MAP_POPULATE)
        try:
            figs = _bandwidth(m)
        finally:
            m.close()
        return (f"write {figs['write_GBps']:.2f} GB/s, read {figs['read_GBps']:.2f} GB/s, "
                f"copy {figs['copy_GBps']:.2f} GB/s (populated memory, best of 3 over {_hs(figs['bytes'])}); "
                f"persisted write {figs['write_persist_GBps']:.2f} GB/s"), figs

    # -- 6 model ---------------------------------------------------------------

    def model(self) -> tuple[str, dict[str, Any]]:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        from .loader import load_model
        from .pool import open_pool

        t = self.target
        self.tmpdir = tempfile.mkdtemp(prefix="pyaccel-smoke-")
        model_path, feeds = _write_model(self.tmpdir, self.seed)
        if t.created:
            os.unlink(t.path)  # give the pattern file's memory back (hugepages) before the pool takes its own
        t0 = time.perf_counter()
        kw = {} if t.device else {"size": self.length}
        pool = open_pool(t.path, create=True, force=True, **kw)
        self.pool_made = True
        t_pool = time.perf_counter() - t0
        try:
            st = pool.status()
            model = load_model(model_path, pool, progress=False, verify=True, name=MODEL_NAME)
            try:
                info = model.info
                if not info.streamed:
                    raise StepFailed("the fresh pool already held the model: it was not streamed")
                again = load_model(model_path, pool, progress=False, name=MODEL_NAME)
                attached = not again.info.streamed
                t_attach = again.info.seconds
                again.close()
                if not attached:
                    raise StepFailed("a second load streamed the model again instead of attaching to it")
                # weights: the pool's bytes are the file's
                ref_model = onnx.load(model_path)
                bad_w = [i.name for i in ref_model.graph.initializer
                         if numpy_helper.to_array(i).tobytes() != model.weights[i.name].tobytes()]
                if bad_w:
                    raise StepFailed(f"weights differ from the file's: {', '.join(bad_w)}")
                so_ref = ort.SessionOptions()
                so_ref.add_session_config_entry("session.disable_prepacking", "1")
                ref = ort.InferenceSession(model_path, so_ref, providers=["CPUExecutionProvider"])
                t0 = time.perf_counter()
                sess = model.session(ort.SessionOptions(), providers=["CPUExecutionProvider"], prepack=False)
                t_sess = time.perf_counter() - t0
                t0 = time.perf_counter()
                outs = sess.run(None, feeds)
                t_run = time.perf_counter() - t0
                want = ref.run(None, feeds)
                names = [o.name for o in sess.get_outputs()]
                diffs = []
                for name, a, b in zip(names, outs, want):
                    a, b = np.asarray(a), np.asarray(b)
                    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                        diffs.append(f"{name} (max |diff| {float(np.max(np.abs(a.astype(np.float64) - b))):g})"
                                     if a.shape == b.shape else f"{name} (shape {a.shape} vs {b.shape})")
                del sess, ref, outs, want
            finally:
                model.close()
        finally:
            pool.close()
        figs = {
            "pool_size": st.size,
            "pool_create_s": round(t_pool, 4),
            "model_bytes": info.nbytes,
            "tensors": info.n_tensors,
            "stream_s": round(info.seconds, 4),
            "attach_s": round(t_attach, 4),
            "session_s": round(t_sess, 4),
            "run_s": round(t_run, 4),
            "outputs": len(names),
            "bit_identical": not diffs,
        }
        if diffs:
            raise StepFailed("outputs through the pool differ from onnxruntime on the file: " + ", ".join(diffs), figs)
        return (f"pool {_hs(st.size)} made in {t_pool * 1e3:.0f} ms; {info.n_tensors} tensors "
                f"({_hs(info.nbytes)}) streamed in {info.seconds * 1e3:.1f} ms, attached in "
                f"{t_attach * 1e3:.1f} ms; session {t_sess * 1e3:.1f} ms, run {t_run * 1e3:.1f} ms; "
                f"{len(names)} outputs bit-identical to onnxruntime on the file"), figs

    # -- 7 cleanup ---------------------------------------------------------------

    def cleanup(self) -> tuple[str, dict[str, Any]]:
        t = self.target
        done = []
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            done.append("removed the generated model")
        figs: dict[str, Any] = {"kept": False, "removed": False, "wiped_bytes": 0}
        if self.keep and self.pool_made:
            figs["kept"] = True
            done.append(f"kept the test pool at {t.path} (`pyaccel ls --pool {t.path}`)")
        elif t.created:
            if os.path.exists(t.path):
                os.unlink(t.path)
            figs["removed"] = True
            done.append(f"deleted {t.path}")
        elif t.existed and self._touched():
            wiped = self._wipe()
            figs["wiped_bytes"] = wiped
            done.append(f"zeroed the first {_hs(wiped)} of {t.path}: it no longer looks like a pool")
        else:
            done.append(f"{t.path} was not written")
        return "; ".join(done), figs

    def _touched(self) -> bool:
        return any(s.name == "patterns" and s.status in ("PASS", "FAIL") for s in self.steps) or self.pool_made

    def _wipe(self) -> int:
        from ._driver import _Map

        from .errors import PoolFormatError
        from .pool import open_pool

        m = _Map(self.target.path, 0, 0, 0)
        try:
            n = min(WIPE_BYTES, m.length)
            m.write(0, bytes(n))
            m.persist(0, n)
        finally:
            m.close()
        try:
            open_pool(self.target.path, readonly=True).close()
        except PoolFormatError:
            return n
        raise StepFailed(f"{self.target.path} still opens as a pool after zeroing its first {_hs(n)}")


def _bandwidth(m: Any) -> dict[str, Any]:
    """GB/s of plain writes, reads and copies over a populated mapping, and of persisted writes.

    Writes and reads go between the mapping and a 2 MiB buffer (which stays in
    the CPU caches), so they measure the mapping's memory; a copy moves the first
    half of the mapping onto the second (the figure counts bytes copied).  Best
    of 3 passes each; persisted writes (``pa_map_memcpy``: non-temporal stores
    and the flushes the granularity needs) one pass.
    """
    import numpy as np

    view = np.frombuffer(m, dtype=np.uint8)
    n = len(view)
    blk = min(2 * MiB, n)
    src = np.frombuffer(os.urandom(blk), dtype=np.uint8)
    dst = np.empty(blk, dtype=np.uint8)
    whole = n // blk * blk
    half = n // 2

    def best(fn: Callable[[], int], passes: int = 3) -> float:
        rates = []
        for _ in range(passes):
            t0 = time.perf_counter()
            nbytes = fn()
            rates.append(_gbps(nbytes, time.perf_counter() - t0))
        return max(rates)

    def write() -> int:
        for off in range(0, whole, blk):
            view[off:off + blk] = src
        return whole

    def read() -> int:
        for off in range(0, whole, blk):
            np.copyto(dst, view[off:off + blk])
        return whole

    def copy() -> int:
        np.copyto(view[half:2 * half], view[:half])
        return half

    def write_persist() -> int:
        for off in range(0, whole, blk):
            m.write(off, src)
        return whole

    return {"bytes": n, "block": blk, "write_GBps": best(write), "read_GBps": best(read),
            "copy_GBps": best(copy), "write_persist_GBps": best(write_persist, 1)}


def _read_head(path: str, n: int) -> Any:
    """The first ``n`` bytes of a file or device (mapped for device-DAX, which has no read())."""
    import numpy as np

    if stat.S_ISCHR(os.stat(path).st_mode):
        from ._driver import MAP_READONLY, _Map

        m = _Map(path, 0, 0, MAP_READONLY)
        try:
            view = memoryview(m)
            head = np.array(view[:n], dtype=np.uint8)
            view.release()
        finally:
            m.close()
        return head
    with open(path, "rb") as f:
        return np.frombuffer(f.read(n), dtype=np.uint8)


def _block_in_use(path: str) -> str | None:
    """Why a block device must not be touched (mounted, swap, held), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as e:
        if e.errno == errno.EBUSY:
            return "it is in use (mounted, swap, or held by another device)"
        return None
    os.close(fd)
    try:
        from .discover import devices

        real = os.path.realpath(path)
        for d in devices():
            if getattr(d, "in_use", None) and os.path.realpath(d.path) == real:
                return str(d.in_use)
    except Exception:
        pass
    return None


def _pread_crcs(path: str, layout: Sequence[tuple[str, int, int]], direct: bool) -> tuple[dict[str, str], float]:
    """CRC32C of each region read with pread (O_DIRECT into an aligned buffer when ``direct``)."""
    import mmap

    from ._driver import crc32c

    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    buf = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT needs
    mv = memoryview(buf)
    out = {}
    t0 = time.perf_counter()
    try:
        for kind, off, n in layout:
            crc = 0
            for o, k in _chunks(off, n):
                got = 0
                while got < k:
                    r = os.preadv(fd, [mv[got:k]], o + got)
                    if r <= 0:
                        raise OSError(errno.EIO, f"{path}: short read at offset {o + got}")
                    got += r
                crc = crc32c(mv[:k], crc)
            out[kind] = f"{crc:08x}"
    finally:
        mv.release()
        buf.close()
        os.close(fd)
    return out, time.perf_counter() - t0


def _write_model(d: str, seed: int, dim: int = 256, layers: int = 4) -> tuple[str, dict[str, Any]]:
    """A small MLP (MatMul + Add + Relu layers) with its weights in external data."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h = "x"
    for i in range(layers):
        w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
        b = rng.standard_normal(dim).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"]))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"a{i}" if out != "y" else "y"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
            h = out
    nodes.append(helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0))
    graph = helper.make_graph(
        nodes, "pyaccel_smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(d, "smoke.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="smoke.weights", size_threshold=0)
    feeds = {"x": rng.standard_normal((4, dim)).astype(np.float32)}
    return path, feeds


# ---------------------------------------------------------------------------
# Output and entry points
# ---------------------------------------------------------------------------


def _print_step(step: Step) -> None:
    print(f"[{step.number}/7] {step.name:<12} {step.status:<7} {step.detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the smoke test for parsed arguments; prints, returns the exit status."""
    as_json = bool(getattr(args, "json", False))
    t0 = time.perf_counter()
    try:
        test = SmokeTest(args, None if as_json else _print_step)
    except OSError as e:
        from .cli import _error_text

        print(f"smoke-test: error: {_error_text(e)}", file=sys.stderr)
        return EXIT_FAIL
    if not as_json:
        t = test.target
        print(f"pyaccel smoke test of {t.path}" + (f" ({t.note})" if t.note else ""), flush=True)
    code = test.run()
    result = {EXIT_PASS: "PASS", EXIT_FAIL: "FAIL", EXIT_REFUSED: "REFUSED"}[code]
    if as_json:
        doc = {
            "target": test.target.path,
            "given": test.target.given,
            "note": test.target.note or None,
            "result": result,
            "exit_code": code,
            "seconds": round(time.perf_counter() - t0, 3),
            "steps": [{"step": s.number, "name": s.name, "status": s.status, "detail": s.detail,
                       "seconds": s.seconds, "figures": s.figures} for s in test.steps],
        }
        print(json.dumps(doc, indent=2))
    else:
        passed = sum(s.status == "PASS" for s in test.steps)
        print(f"RESULT: {result} ({passed}/{len(test.steps)} steps passed, {time.perf_counter() - t0:.1f} s)")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/smoke-test [DEVICE_OR_PATH] [--size 256M] [--force] [--json] [--keep]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child-verify"]:
        return _child_verify(json.loads(argv[1]))
    from .cli import _Parser

    p = _Parser(prog="smoke-test", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("smoke-test: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
