"""The ``pyaccel`` command line (also ``python -m pyaccel``).

Commands
--------
``devices``
    What fast memory this machine offers, and where the default pool goes.
``pool create PATH [--size 4G] [--partitions a:1G,b:0] [--force]``
    Make a pool on a file or a device.
``pool status [PATH]``, ``pool fsck [PATH] [--repair]``, ``pool verify [PATH] [MODEL]``
    Inspect a pool, check (and mend) its metadata, re-check tensor checksums.
``load MODEL.onnx``, ``ls``, ``evict NAME``, ``run MODEL.onnx``
    Stream a model into a pool, list the models, remove one, run inference
    through the pool.
``bench [ARGS...]``, ``smoke-test [ARGS...]``
    The benchmark (source checkouts only) and the hardware smoke test.

Every command takes ``--json`` (one JSON document on standard output, stable
keys) and ``--debug`` (a traceback instead of a one-line error).

Exit status: 0 success; 1 an error, or problems found (``pool fsck``
problems that remain, ``pool verify`` bad tensors, a smoke-test step that
failed); 2 bad usage (and the smoke test's refusal to touch a device that
holds data); 130 interrupted.

Only the public Python layer is imported (``pyaccel``, ``pyaccel.pool``,
``pyaccel.loader``, ``pyaccel.discover``, ``pyaccel.config``,
``pyaccel.errors``), and only inside the command that needs it, so that
``pyaccel --help`` does not pay for numpy, onnx or the C extension.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, NoReturn, Sequence

__all__ = ["main", "CliError", "human_size", "parse_partitions_arg"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "pyaccel"


class CliError(Exception):
    """An error the CLI reports as one line on standard error, with an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def human_size(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units, like the sizes the commands accept."""
    if n is None:
        return "-"
    n = int(n)
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{human_size(int(nbytes / seconds))}/s" if seconds > 0 else "-"


def _ago(ns: int) -> str:
    if not ns:
        return "-"
    dt = time.time() - ns / 1e9
    if dt < 0:
        return "just now"
    for unit, secs in (("d", 86400), ("h", 3600), ("min", 60)):
        if dt >= secs:
            return f"{dt / secs:.0f} {unit} ago"
    return f"{dt:.0f} s ago"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Align columns; columns in ``right`` are right-aligned (numbers)."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    right = set(right)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            last = i == len(cells) - 1
            if i in right:
                out.append(c.rjust(widths[i]))
            else:
                out.append(c if last else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def _emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _asdict(o: Any) -> dict[str, Any]:
    return json.loads(json.dumps(o, default=_json_default))


# ---------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------


def _size_arg(text: str) -> int:
    from .config import ConfigError, parse_size

    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.detail) from None


_PART_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_partitions_arg(text: str) -> list[tuple[str, int]]:
    """Parse ``"a:1G,b:0"`` into ``[("a", 1 << 30), ("b", 0)]``.

    A size of ``0`` is allowed for the last partition only: it takes what is
    left of the pool.
    """
    from .config import ConfigError, parse_size

    out: list[tuple[str, int]] = []
    items = [i.strip() for i in text.split(",")]
    for k, item in enumerate(items):
        name, sep, size = (s.strip() for s in item.partition(":"))
        if not sep or not name or not size:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME:SIZE (e.g. models:3G, or scratch:0 for the rest)")
        if not _PART_NAME.match(name):
            raise argparse.ArgumentTypeError(f"partition name {name!r} may only hold letters, digits, '_', '.', '-'")
        if any(name == n for n, _ in out):
            raise argparse.ArgumentTypeError(f"partition {name!r} is given twice")
        if size == "0":
            if k != len(items) - 1:
                raise argparse.ArgumentTypeError(f"only the last partition may have size 0 (the rest), not {name!r}")
            out.append((name, 0))
            continue
        try:
            out.append((name, parse_size(size)))
        except ConfigError as e:
            raise argparse.ArgumentTypeError(f"partition {name!r}: {e.detail}") from None
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on standard error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------


def _pool_path(arg: str | None) -> tuple[str, bool]:
    """The pool path to use and whether it is the default one."""
    if arg:
        return arg, False
    from .discover import default_pool

    return default_pool().path, True


def _open_existing(arg: str | None, *, readonly: bool, recover: bool = False) -> Any:
    """Open a pool that must exist already (never creates one)."""
    from .pool import open_pool

    path, default = _pool_path(arg)
    if not os.path.exists(path):
        which = "the default pool " if default else ""
        raise CliError(f"no pool at {which}{path}; create it with `pyaccel pool create {path}`"
                       + (" or load a model with `pyaccel load MODEL.onnx`" if default else ""))
    return open_pool(path, readonly=readonly, recover=recover)


def _open_for_load(arg: str | None) -> Any:
    """The pool ``load`` and ``run`` write to: the given one (must exist) or the default (created)."""
    if arg:
        return _open_existing(arg, readonly=False)
    from .pool import open_pool

    return open_pool(None)


def _status_dict(st: Any) -> dict[str, Any]:
    return _asdict(st)


def _print_status(st: Any) -> None:
    pers = "persistent" if st.persistent else "not persistent"
    health = "clean" if st.clean else "in use (or not closed cleanly)"
    if st.needs_fsck:
        health = "NEEDS FSCK (run `pyaccel pool fsck --repair " + st.path + "`)"
    rows = [
        ("pool", st.path),
        ("uuid", st.uuid),
        ("format", st.format),
        ("kind", f"{st.kind} (durability granularity {st.granularity}, {pers})"),
        ("size", f"{human_size(st.size)} (data area {human_size(st.data_size)})"),
        ("used", f"{human_size(st.used)}   free {human_size(st.free)}   largest free {human_size(st.largest_free)}"
                 f"   fragmentation {st.fragmentation:.0%}"),
        ("models", f"{st.n_models} ready, {st.n_loading} loading, {st.n_tensors} tensors"),
        ("dedup", f"{human_size(st.logical)} of tensors stored in {human_size(st.logical - st.dedup_saved)}"
                  f" (saved {human_size(st.dedup_saved)})"),
        ("generation", str(st.generation)),
        ("health", health),
    ]
    if st.damage:
        rows.append(("damage", "; ".join(st.damage)))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    if st.partitions:
        print()
        print(_table(["PARTITION", "OFFSET", "SIZE", "USED", "FREE", "LARGEST FREE"],
                     [(p.name, p.offset, human_size(p.size), human_size(p.used), human_size(p.free),
                       human_size(p.largest_free)) for p in st.partitions], right=range(1, 6)))


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _device_details(dev: Any) -> str:
    from . import discover as d

    if isinstance(dev, d.DaxDevice):
        node = "-" if dev.numa_node is None else dev.numa_node
        target = "-" if dev.target_node is None else dev.target_node
        return f"{dev.mode}, align {human_size(dev.align)}, numa node {node}, target node {target}"
    if isinstance(dev, d.HugetlbfsMount):
        s = (f"{human_size(dev.pagesize)} pages: {dev.available_pages} available, {dev.free_pages} free, "
             f"{dev.total_pages} total")
        if dev.size_limit is not None:
            s += f", size limit {human_size(dev.size_limit)}"
        return s + (", read-only" if dev.read_only else "")
    if isinstance(dev, d.FsdaxMount):
        return (f"{dev.fstype} on {dev.source}, dax={dev.dax_mode}, {human_size(dev.free)} free"
                + (", read-only" if dev.read_only else ""))
    if isinstance(dev, d.BlockDevice):
        s = f"{dev.driver}, " + ("memory-backed" if dev.memory_backed else "not memory-backed")
        if dev.backing_file:
            s += f", backing {dev.backing_file}"
        if dev.in_use:
            s += f", in use: {dev.in_use}"
        return s + (", read-only" if dev.read_only else "")
    if isinstance(dev, d.TmpfsMount):
        return f"{human_size(dev.free)} free"
    return ""


def _pool_state(path: str, needs_create: bool) -> tuple[str, dict[str, Any]]:
    """What is at the default pool path, in words and as JSON."""
    if not os.path.exists(path):
        return "does not exist yet (made on first use, e.g. `pyaccel load MODEL.onnx`)", {"exists": False}
    from .errors import PoolFormatError, PyaccelError
    from .pool import open_pool

    try:
        with open_pool(path, readonly=True, recover=True) as pool:
            st = pool.status()
    except PoolFormatError:
        hint = f"; format it with `pyaccel pool create {path}`" if needs_create else ""
        return "exists, holds no pyaccel pool" + hint, {"exists": True, "pool": False}
    except (PyaccelError, OSError) as e:
        return f"exists, cannot be opened: {_error_text(e)}", {"exists": True, "pool": None, "error": _error_text(e)}
    return (f"holds a pool: {human_size(st.size)}, {st.n_models} models, {human_size(st.free)} free",
            {"exists": True, "pool": True, "size": st.size, "n_models": st.n_models, "free": st.free})


def cmd_devices(a: argparse.Namespace) -> int:
    from . import discover

    devs = discover.devices()
    choice = discover.default_pool(devs)
    state_text, state = _pool_state(choice.path, choice.needs_create)
    if a.json:
        doc = {
            "devices": [dict(_asdict(d), type=type(d).__name__, usable=discover.unusable_reason(d) is None,
                             unusable_reason=discover.unusable_reason(d)) for d in devs],
            "default_pool": dict(
                {k: v for k, v in _asdict(choice).items() if k != "device"},
                device=choice.device.path if choice.device is not None else None,
                state=state,
            ),
        }
        _emit_json(doc)
        return EXIT_OK
    rows = []
    for d in devs:
        why = discover.unusable_reason(d)
        rows.append((d.kind, d.path, human_size(d.size), _device_details(d), "yes" if why is None else f"no: {why}"))
    if rows:
        print(_table(["KIND", "PATH", "SIZE", "DETAILS", "USABLE"], rows, right=[2]))
    else:
        print("no device-DAX, hugetlbfs, fsdax, memory-backed block device or /dev/shm found")
    print()
    kind = choice.kind or "pinned"
    print(f"default pool: {choice.path} ({kind}, from {choice.source})")
    print(f"  why:   {choice.reason}")
    for s in choice.skipped:
        print(f"  skipped: {s}")
    if choice.size is not None:
        print(f"  size:  {human_size(choice.size)} (configured)")
    if choice.partitions:
        print("  partitions: " + ", ".join(f"{n} {human_size(s)}" for n, s in choice.partitions.items()))
    print(f"  state: {state_text}")
    return EXIT_OK


def cmd_pool_create(a: argparse.Namespace) -> int:
    from .errors import PoolCorruptError, PoolFormatError, PoolUncleanError
    from .pool import open_pool

    path = a.path
    if not a.force and os.path.exists(path):
        try:
            with open_pool(path, readonly=True, recover=True) as pool:
                st = pool.status()
        except (PoolCorruptError, PoolUncleanError):
            raise CliError(f"{path} already holds a pyaccel pool (one that needs fsck); "
                           "give --force to overwrite it, destroying its models") from None
        except (PoolFormatError, OSError):
            pass  # no pool there: open_pool below decides (blank, or data needing --force)
        else:
            raise CliError(f"{path} already holds a pyaccel pool ({st.n_models} models, "
                           f"{human_size(st.size)}); give --force to overwrite it, destroying its models")
    if a.size is not None and _is_device(path):
        print(f"{PROG}: note: --size is ignored: a device is used whole", file=sys.stderr)
    t0 = time.perf_counter()
    with open_pool(path, create=True, size=a.size, partitions=a.partitions, force=a.force) as pool:
        st = pool.status()
    dt = time.perf_counter() - t0
    if a.json:
        _emit_json(dict(_status_dict(st), seconds=dt))
        return EXIT_OK
    print(f"created pool {path}: {human_size(st.size)} on {st.kind} (granularity {st.granularity}), "
          f"{human_size(st.data_size)} for data, in {_ms(dt)}")
    if len(st.partitions) > 1 or (st.partitions and st.partitions[0].name != "default"):
        print("partitions: " + ", ".join(f"{p.name} {human_size(p.size)}" for p in st.partitions))
    return EXIT_OK


def _is_device(path: str) -> bool:
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def cmd_pool_status(a: argparse.Namespace) -> int:
    with _open_existing(a.path, readonly=True, recover=True) as pool:
        st = pool.status()
    if a.json:
        _emit_json(_status_dict(st))
    else:
        _print_status(st)
    return EXIT_OK


def cmd_pool_fsck(a: argparse.Namespace) -> int:
    with _open_existing(a.path, readonly=not a.repair, recover=True) as pool:
        rep = pool.fsck(repair=a.repair)
        after = pool.fsck(repair=False) if a.repair else rep
    remaining = after.problems
    if a.json:
        _emit_json({"path": pool.path, "repair": a.repair, "report": _asdict(rep),
                    "remaining_problems": remaining, "remaining": list(after.report) if a.repair else None})
    else:
        for line in rep.report:
            print(line)
        if rep.damage:
            print("damage: " + "; ".join(rep.damage))
        if a.repair and rep.problems:
            print(f"repaired: {rep.problems} problems found, {remaining} remain")
        elif remaining:
            print(f"{remaining} problems found; run `pyaccel pool fsck --repair {pool.path}` to mend them")
        else:
            print(f"{pool.path}: no problems")
    return EXIT_FAIL if remaining else EXIT_OK


def cmd_pool_verify(a: argparse.Namespace) -> int:
    with _open_existing(a.path, readonly=True) as pool:
        t0 = time.perf_counter()
        if a.model is not None:
            recs = [_find(pool, a.model)]
            bad = pool.verify(recs[0].id)
        else:
            recs = pool.models(all_versions=True)
            bad = pool.verify()
        n_tensors = sum(r.n_tensors for r in recs)
        nbytes = sum(r.bytes for r in recs)
    dt = time.perf_counter() - t0
    if a.json:
        _emit_json({"path": pool.path, "model": a.model, "models": len(recs), "tensors": n_tensors,
                    "bytes": nbytes, "seconds": dt, "bad": bad, "ok": not bad})
    else:
        for line in bad:
            print(line)
        what = f"model {a.model!r}" if a.model is not None else f"{len(recs)} models"
        if bad:
            print(f"{len(bad)} bad tensors in {what} ({n_tensors} tensors checked)")
        else:
            print(f"{what}: {n_tensors} tensors, {human_size(nbytes)} match their checksums ({_ms(dt)})")
    return EXIT_FAIL if bad else EXIT_OK


def _load(a: argparse.Namespace, pool: Any) -> Any:
    from .loader import load_model

    progress = False if (a.no_progress or a.json) else None
    return load_model(a.model, pool, progress=progress, verify=getattr(a, "verify", False), name=a.name,
                      partition=a.partition if a.partition is not None else 0)


def _info_dict(info: Any) -> dict[str, Any]:
    return _asdict(info)


def _describe_load(info: Any) -> str:
    if info.streamed:
        direct = f", {human_size(info.direct_bytes)} with O_DIRECT" if info.direct_bytes else ""
        return (f"streamed {info.n_tensors} tensors, {human_size(info.nbytes)} in {_ms(info.seconds)} "
                f"({_rate(info.nbytes, info.seconds)}{direct})")
    return (f"attached to {info.n_tensors} tensors, {human_size(info.nbytes)} already in the pool, "
            f"in {_ms(info.seconds)} (the file's weights were not read)")


def cmd_load(a: argparse.Namespace) -> int:
    with _open_for_load(a.pool) as pool:
        model = _load(a, pool)
        info = model.info
        model.close()
    if a.json:
        _emit_json(dict(_info_dict(info), verified=bool(a.verify)))
        return EXIT_OK
    print(f"{info.source} -> {info.pool} as {info.name!r}")
    print("  " + _describe_load(info))
    if a.verify:
        print(f"  verified: {info.n_tensors} tensors match their checksums")
    return EXIT_OK


def cmd_ls(a: argparse.Namespace) -> int:
    with _open_existing(a.pool, readonly=True, recover=True) as pool:
        recs = pool.models(all_versions=a.all)
    if a.json:
        _emit_json({"path": pool.path, "models": [dict(_asdict(r), source=r.source) for r in recs]})
        return EXIT_OK
    if not recs:
        print(f"{pool.path}: no models")
        return EXIT_OK
    rows = []
    for r in recs:
        state = "superseded" if r.superseded else r.state
        name = r.name if (r.source is None or r.source == r.name) else f"{r.name} (from {r.source})"
        rows.append((r.id, human_size(r.bytes), human_size(r.stored), r.n_tensors, r.partition, state,
                     "yes" if r.in_use else "no", _ago(r.last_used_ns), name))
    print(_table(["ID", "SIZE", "UNIQUE", "TENSORS", "PARTITION", "STATE", "IN USE", "LAST USED", "NAME"], rows,
                 right=[0, 1, 2, 3]))
    return EXIT_OK


def cmd_evict(a: argparse.Namespace) -> int:
    with _open_existing(a.pool, readonly=False) as pool:
        before = pool.status().used
        target = _find(pool, a.name)
        pool.evict(target.id)
        freed = before - pool.status().used
    if a.json:
        _emit_json({"path": pool.path, "evicted": target.name, "id": target.id, "freed": freed})
    else:
        print(f"evicted {target.name!r} from {pool.path} (freed {human_size(freed)})")
    return EXIT_OK


def _find(pool: Any, name: str) -> Any:
    """The model record called ``name``, or loaded from the source path ``name``."""
    from .errors import ModelNotFoundError

    try:
        return pool.model(name)
    except ModelNotFoundError:
        real = os.path.realpath(name)
        for rec in pool.models():
            if rec.source == real:
                return rec
        raise


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def _random_input(inp: Any, rng: Any) -> Any:
    import numpy as np

    dtype = _ORT_TYPES.get(inp.type)
    if dtype is None:
        raise CliError(f"input {inp.name!r} is of type {inp.type}: --random cannot make it; give it with --input")
    shape = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in (inp.shape or []))
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dt)  # small: safe as indices


def cmd_run(a: argparse.Namespace) -> int:
    import numpy as np

    feeds: dict[str, Any] = {}
    for spec in a.input:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise CliError(f"--input {spec!r}: expected NAME=file.npy", EXIT_USAGE)
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except ValueError as e:
            raise CliError(f"--input {name}: {file}: not a .npy array ({e})") from None
    with _open_for_load(a.pool) as pool:
        model = _load(a, pool)
        info = model.info
        try:
            t0 = time.perf_counter()
            sess = model.session(prepack=a.prepack)
            t_session = time.perf_counter() - t0
            inputs = sess.get_inputs()
            known = {i.name for i in inputs}
            extra = sorted(set(feeds) - known)
            if extra:
                raise CliError(f"the model has no input {extra[0]!r} (its inputs: {', '.join(sorted(known))})")
            rng = np.random.default_rng(a.seed)
            for inp in inputs:
                if inp.name not in feeds:
                    if not a.random:
                        raise CliError(f"input {inp.name!r} ({inp.type}, shape {inp.shape}) is not given: "
                                       f"use --input {inp.name}=file.npy, or --random")
                    feeds[inp.name] = _random_input(inp, rng)
            times = []
            outs: list[Any] = []
            names = [o.name for o in sess.get_outputs()]
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                try:
                    outs = sess.run(None, feeds)
                except Exception as e:  # onnxruntime's own exception types
                    raise CliError(f"onnxruntime: {str(e).strip()}") from None
                times.append(time.perf_counter() - t0)
            if a.save:
                os.makedirs(a.save, exist_ok=True)
                for n, o in zip(names, outs):
                    np.save(os.path.join(a.save, re.sub(r"[^A-Za-z0-9_.-]", "_", n) + ".npy"), o)
            results = [{"name": n, "dtype": str(np.asarray(o).dtype), "shape": list(np.shape(o))}
                       for n, o in zip(names, outs)]
            in_desc = [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()]
            del sess, outs
        finally:
            model.close()
    srt = sorted(times)
    lat = {"first": times[0], "min": srt[0], "median": srt[len(srt) // 2], "max": srt[-1], "runs": len(times)}
    if a.json:
        _emit_json({"load": _info_dict(info), "session_seconds": t_session, "prepack": a.prepack,
                    "inputs": in_desc, "outputs": results, "latency": lat})
        return EXIT_OK
    print(f"{info.source} -> {info.pool} as {info.name!r}")
    print("  " + _describe_load(info))
    print(f"  session in {_ms(t_session)} (prepacking {'on' if a.prepack else 'off: weights served from the pool'})")
    print()
    print(_table(["", "NAME", "DTYPE", "SHAPE"],
                 [("input", d["name"], d["dtype"], tuple(d["shape"])) for d in in_desc]
                 + [("output", d["name"], d["dtype"], tuple(d["shape"])) for d in results]))
    print()
    if len(times) == 1:
        print(f"latency: {_ms(times[0])}")
    else:
        print(f"latency over {len(times)} runs: first {_ms(lat['first'])}, min {_ms(lat['min'])}, "
              f"median {_ms(lat['median'])}, max {_ms(lat['max'])}")
    if a.save:
        print(f"outputs saved in {a.save}/")
    return EXIT_OK


def _source_root() -> str | None:
    """The source checkout this pyaccel comes from, when it has the bench/ package."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(top, "bench", "__main__.py")):
        return top
    return None


def cmd_bench(args: Sequence[str]) -> int:
    top = _source_root()
    if top is None:
        raise CliError("`pyaccel bench` is only available from a source checkout (it runs `python -m bench` "
                       "from the repository's bench/ package, which is not installed)")
    env = dict(os.environ)
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([sys.executable, "-m", "bench", *args], env=env)


def cmd_smoke(a: argparse.Namespace) -> int:
    from . import smoke

    return smoke.run(a)


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


def _common(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """--json and --debug: given before or after the command.

    Subcommands use ``default=SUPPRESS`` so that they do not reset what was
    given before the command; each call makes new actions (parents share them).
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", default=default,
                   help="print one JSON document (stable keys) instead of tables")
    p.add_argument("--debug", action="store_true", default=default,
                   help="show a traceback on errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``pyaccel`` argument parser (every command, with its help)."""
    common = _common()
    p = _Parser(prog=PROG, parents=[_common(False)],
                description="Persistent, shared weight pools on fast memory (device-DAX, hugepages, "
                            "memory-backed block devices, tmpfs) and a zero-copy ONNX loader.",
                epilog="Exit status: 0 success; 1 error or problems found; 2 bad usage (or smoke-test "
                       "refusal); 130 interrupted.  The default pool is PYACCEL_POOL, else "
                       "~/.config/pyaccel.conf or /etc/pyaccel.conf, else the best device found "
                       "(see `pyaccel devices`).")
    from . import __version__

    p.add_argument("--version", action="version", version=f"pyaccel {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, **kw: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=kw.pop("description", help), **kw)
        sp.set_defaults(func=func)
        return sp

    add("devices", cmd_devices, "list the fast memory this machine offers and the default pool choice")

    pool = sub.add_parser("pool", parents=[common], help="create, inspect, check a pool",
                          description="Create, inspect and check weight pools.")
    psub = pool.add_subparsers(dest="pool_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True

    def padd(name: str, func: Callable[[argparse.Namespace], int], help: str, **kw: Any) -> argparse.ArgumentParser:
        sp = psub.add_parser(name, parents=[common], help=help, description=kw.pop("description", help), **kw)
        sp.set_defaults(func=func)
        return sp

    sp = padd("create", cmd_pool_create, "make a pool on a file or a device",
              description="Make a pool on a file (created with --size bytes) or a device (used whole). "
                          "Refuses a path that already holds a pool or other data unless --force.")
    sp.add_argument("path", metavar="PATH", help="file (on hugetlbfs, tmpfs, fsdax, ...) or device")
    sp.add_argument("--size", type=_size_arg, default=None,
                    help="size of a new pool file, e.g. 512M, 4G (default: 8G or half the free space)")
    sp.add_argument("--partitions", type=parse_partitions_arg, default=None, metavar="NAME:SIZE,...",
                    help="named partitions, e.g. models:3G,scratch:0 (0: the rest, last only)")
    sp.add_argument("--force", action="store_true", help="overwrite whatever PATH holds (a pool, data)")

    sp = padd("status", cmd_pool_status, "sizes, usage, fragmentation, dedup savings and health of a pool")
    sp.add_argument("path", metavar="PATH", nargs="?", help="the pool (default: the default pool)")

    sp = padd("fsck", cmd_pool_fsck, "check a pool's metadata (exit 1 when problems remain)",
              description="Check a pool's metadata; with --repair, mend what can be mended. "
                          "Exit 1 when problems remain.")
    sp.add_argument("path", metavar="PATH", nargs="?", help="the pool (default: the default pool)")
    sp.add_argument("--repair", action="store_true", help="mend what can be mended (opens the pool read-write)")

    sp = padd("verify", cmd_pool_verify, "re-check tensor checksums (exit 1 on bad tensors)")
    sp.add_argument("path", metavar="PATH", nargs="?", help="the pool (default: the default pool)")
    sp.add_argument("model", metavar="MODEL", nargs="?", help="only this model (name or source path)")

    def load_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", metavar="MODEL.onnx", help="the ONNX model file")
        sp.add_argument("--pool", metavar="PATH", default=None,
                        help="the pool (must exist); default: the default pool, created on first use")
        sp.add_argument("--name", default=None, help="the model's name in the pool (default: the file's real path)")
        sp.add_argument("--partition", default=None, help="the pool partition to load into")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    sp = add("load", cmd_load, "stream an ONNX model's weights into a pool (or attach to them)")
    load_opts(sp)
    sp.add_argument("--verify", action="store_true", help="re-check every tensor's checksum afterwards")

    sp = add("ls", cmd_ls, "list the models in a pool",
             description="List the models in a pool: SIZE is the bytes of its tensors, UNIQUE the bytes "
                         "only it holds (what evicting it frees; identical tensors are stored once).")
    sp.add_argument("--pool", metavar="PATH", default=None, help="the pool (default: the default pool)")
    sp.add_argument("--all", action="store_true", help="also models being loaded and superseded versions")

    sp = add("evict", cmd_evict, "remove a model that no process uses")
    sp.add_argument("name", metavar="NAME", help="model name or source path")
    sp.add_argument("--pool", metavar="PATH", default=None, help="the pool (default: the default pool)")

    sp = add("run", cmd_run, "run inference through the pool",
             description="Load MODEL.onnx into the pool (or attach), make an onnxruntime session over the "
                         "pool's weights and run it; prints output shapes and latency.")
    load_opts(sp)
    sp.add_argument("--input", action="append", default=[], metavar="NAME=file.npy",
                    help="an input from a .npy file (repeatable)")
    sp.add_argument("--random", action="store_true",
                    help="make the inputs not given from the model's shapes (dynamic dimensions = 1)")
    sp.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    sp.add_argument("--repeat", type=_positive_int, default=1, metavar="N", help="run N times (default 1)")
    sp.add_argument("--prepack", action="store_true",
                    help="let onnxruntime prepack weights (a private copy; faster at batch > 1)")
    sp.add_argument("--save", metavar="DIR", default=None, help="save the outputs as DIR/NAME.npy")

    add("bench", cmd_bench_ns, "the benchmark (source checkouts: runs `python -m bench ARGS...`)",
        add_help=False)

    from . import smoke

    sp = add("smoke-test", cmd_smoke, "hardware smoke test of a device or file (PASS/FAIL per step)",
             description=smoke.DESCRIPTION, epilog=smoke.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    smoke.add_arguments(sp)
    return p


def cmd_bench_ns(a: argparse.Namespace) -> int:  # pragma: no cover - main() dispatches bench itself
    return cmd_bench(getattr(a, "bench_args", []))


# ---------------------------------------------------------------------------
# Errors and main
# ---------------------------------------------------------------------------


def _error_text(e: BaseException) -> str:
    """One line for an exception."""
    from .errors import PoolCorruptError, PoolUncleanError, PyaccelError

    if isinstance(e, PyaccelError):
        text = str(e)
        if isinstance(e, (PoolUncleanError, PoolCorruptError)) and "fsck" not in text:
            text += f" (run `pyaccel pool fsck --repair {e.path}`)"
    elif isinstance(e, OSError):
        text = e.strerror or str(e)
        if e.filename and str(e.filename) not in text:
            text = f"{e.filename}: {text}"
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _split_bench(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``[global options] bench ARGS...`` -> (global options, ARGS); None when not bench."""
    for i, tok in enumerate(argv):
        if tok == "bench":
            return list(argv[:i]), list(argv[i + 1:])
        if not tok.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyaccel`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        bench = _split_bench(argv)
        if bench is not None:
            return cmd_bench(bench[1])
        a = build_parser().parse_args(argv)
        debug = a.debug
        return int(a.func(a) or 0)
    except CliError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `pyaccel ls | head`: not an error; keep Python from complaining at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_FAIL
    except Exception as e:
        if debug:
            raise
        from .errors import PyaccelError

        hint = "" if isinstance(e, (PyaccelError, OSError)) else " (an unexpected error: --debug shows the traceback)"
        print(f"{PROG}: error: {_error_text(e)}{hint}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
