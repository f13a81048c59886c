"""The weight pool: format, allocation, partitions, dedup, eviction, leases, corruption."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyaccel
from pyaccel import _driver
from pyaccel.errors import (
    ModelInUseError,
    ModelNotFoundError,
    PoolCorruptError,
    PoolFormatError,
    PoolFullError,
    PoolUncleanError,
)

from conftest import python_env, run_python
from pool_helpers import (
    MiB,
    catalog_generations,
    check_invariants,
    corrupt,
    load,
    model_arrays,
    read_model,
    ready_names,
    write_arrays,
)


def test_create_load_attach_on_every_backend(pool_path: str) -> None:
    """The same scenario on tmpfs, hugetlbfs (root) and a loop device (root)."""
    size = 64 * MiB if not pool_path.startswith("/dev/loop") else 0
    with pyaccel.open_pool(pool_path, create=True, size=size) as pool:
        st = pool.status()
        assert st.n_models == 0 and st.free > 40 * MiB
        mid, lease = load(pool, "alpha", n=4, size=3 * MiB)
        del lease
        assert ready_names(pool) == {"alpha"}
        if st.kind == "hugetlbfs":
            # large tensors start on 2 MiB boundaries on hugepage pools
            assert all(t.offset % (2 * MiB) == 0 for t in pool.tensors("alpha"))
        else:
            assert all(t.offset % 4096 == 0 for t in pool.tensors("alpha"))
    # a second process attaches and reads the same bytes
    code = (
        "import sys, numpy as np, pyaccel\n"
        "sys.path.insert(0, 'tests'); from pool_helpers import read_model, model_arrays\n"
        "pool = pyaccel.open_pool(sys.argv[1])\n"
        "got = read_model(pool, 'alpha')\n"
        "want = model_arrays('alpha', n=4, size=3 << 20)\n"
        "assert all(np.array_equal(a, b) for a, b in zip(got, want))\n"
        "assert not got[0].flags.writeable\n"
        "print('ok', pool.status().kind)\n"
    )
    out = run_python(code, pool_path).stdout
    assert out.startswith("ok")
    with pyaccel.open_pool(pool_path) as pool:
        assert pool.verify() == []
        check_invariants(pool)


def test_status_and_partitions(shm_dir: Path) -> None:
    path = str(shm_dir / "p.pool")
    with pyaccel.open_pool(path, create=True, size=64 * MiB, partitions=[("a", 16 * MiB), ("b", 0)]) as pool:
        parts = {p.name: p for p in pool.status().partitions}
        assert set(parts) == {"a", "b"} and parts["a"].size == 16 * MiB
        arrays = model_arrays("big", n=1, size=12 * MiB)
        write_arrays(pool, "big", arrays, partition="a")
        # "a" is full now although "b" has room: partitions do not share
        with pytest.raises(PoolFullError, match="partition a") as ei:
            write_arrays(pool, "big2", model_arrays("big2", n=1, size=12 * MiB), partition="a", evict=False)
        assert ei.value.errno == errno.ENOSPC
        write_arrays(pool, "other", model_arrays("other", n=1, size=12 * MiB), partition="b")
        parts = {p.name: p for p in pool.status().partitions}
        assert parts["a"].used >= 12 * MiB and parts["b"].used >= 12 * MiB
        assert {m.name: m.partition for m in pool.models()} == {"big": "a", "other": "b"}
    with pytest.raises(OSError, match="does not fit"):
        pyaccel.open_pool(str(shm_dir / "q.pool"), create=True, size=16 * MiB, partitions={"a": 64 * MiB})


def test_dedup_within_and_across_models(shm_dir: Path) -> None:
    with pyaccel.open_pool(str(shm_dir / "d.pool"), create=True, size=64 * MiB) as pool:
        a = model_arrays("m1", n=3, size=MiB, shared=2)
        tied = [a[0], a[1], a[2], a[0]]  # a tied weight: the same bytes twice
        write_arrays(pool, "m1", tied)
        assert pool.status().dedup_saved == MiB
        b = model_arrays("m2", n=3, size=MiB, shared=2)  # fine-tuned: 2 of 3 shared
        write_arrays(pool, "m2", b)
        st = pool.status()
        assert st.dedup_saved == 3 * MiB and st.logical == 7 * MiB
        refs = {t.name: t.refcount for t in pool.tensors("m2")}
        assert refs["w0"] == 3 and refs["w2"] == 1
        # evicting one keeps the shared bytes for the other
        pool.evict("m1")
        got = read_model(pool, "m2")
        assert all(np.array_equal(x, y) for x, y in zip(got, b))
        del got
        check_invariants(pool)


def test_eviction_is_lru_and_skips_leased(shm_dir: Path) -> None:
    with pyaccel.open_pool(str(shm_dir / "e.pool"), create=True, size=32 * MiB) as pool:
        for name in ("old", "mid", "new"):
            load(pool, name, n=1, size=8 * MiB)
            time.sleep(0.01)
        held = read_model(pool, "old")  # leased: never evicted
        time.sleep(0.01)
        _ = read_model(pool, "mid")  # touched: now more recent than "new"
        del _
        load(pool, "next", n=1, size=8 * MiB)
        assert ready_names(pool) == {"old", "mid", "next"}  # "new" was least recently used
        with pytest.raises(PoolFullError, match="in use: old"):
            load(pool, "huge", n=1, size=28 * MiB)
        # a load that cannot fit even after evicting loses nothing
        assert ready_names(pool) == {"old", "mid", "next"}
        del held


def test_evict_leased_model_is_refused_until_lease_dies(shm_dir: Path) -> None:
    path = str(shm_dir / "l.pool")
    with pyaccel.open_pool(path, create=True, size=32 * MiB) as pool:
        load(pool, "m", n=2)
        with subprocess.Popen(
            [sys.executable, "-c",
             "import sys; sys.path.insert(0, 'tests'); import pyaccel; from pool_helpers import read_model\n"
             "p = pyaccel.open_pool(sys.argv[1], readonly=True); w = read_model(p, 'm')\n"
             "print('leased', flush=True); sys.stdin.read()", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env()) as child:
            assert child.stdout is not None and child.stdout.readline().strip() == "leased"
            with pytest.raises(ModelInUseError, match="'m'|m is in use") as ei:
                pool.evict("m")
            assert "in use by another process" in str(ei.value)
            assert pool.models()[0].in_use
            child.kill()  # the lease dies with the process
            child.wait()
        pool.evict("m")
        assert ready_names(pool) == set()
        with pytest.raises(ModelNotFoundError, match="no model named 'm'"):
            pool.evict("m")


def test_arrays_keep_the_lease_after_close(shm_dir: Path) -> None:
    path = str(shm_dir / "k.pool")
    pool = pyaccel.open_pool(path, create=True, size=32 * MiB)
    load(pool, "m", n=1)
    arrays = read_model(pool, "m")
    pool.close()
    other = pyaccel.open_pool(path)
    with pytest.raises(ModelInUseError):
        other.evict("m")
    np.testing.assert_array_equal(arrays[0], model_arrays("m", n=1)[0])
    del arrays
    other.evict("m")
    other.close()


def test_reload_same_name_supersedes(shm_dir: Path) -> None:
    with pyaccel.open_pool(str(shm_dir / "s.pool"), create=True, size=32 * MiB) as pool:
        load(pool, "m", n=1)
        old = read_model(pool, "m")
        write_arrays(pool, "m", [np.full(16384, 7, dtype=np.float32)])
        new = read_model(pool, "m")
        assert new[0][0] == 7 and old[0][0] != 7  # the old bytes stay for their reader
        names = [(m.name, m.superseded) for m in pool.models(all_versions=True)]
        assert names == [("m", True), ("m", False)]
        del old
        write_arrays(pool, "x", [np.zeros(16, np.float32)])  # the next commit drops it
        assert [m.superseded for m in pool.models(all_versions=True) if m.name == "m"] == [False]


def test_not_a_pool_and_newer_format(shm_dir: Path) -> None:
    junk = shm_dir / "junk"
    junk.write_bytes(os.urandom(8 * MiB))
    with pytest.raises(PoolFormatError, match="not a pyaccel pool"):
        pyaccel.open_pool(str(junk))
    with pytest.raises(PoolFormatError, match="not a pyaccel pool; give force=True"):
        pyaccel.open_pool(str(junk), create=True)
    with pytest.raises(FileNotFoundError):
        pyaccel.open_pool(str(shm_dir / "missing.pool"))
    path = str(shm_dir / "v.pool")
    pyaccel.open_pool(path, create=True, size=16 * MiB).close()
    for field_off, value, match in ((16, 2, "newer pyaccel"), (32, 1 << 5, "incompatible features")):
        with open(path, "r+b") as f:
            for base in (0, 4096):  # both superblock copies, checksums redone
                f.seek(base)
                sb = bytearray(f.read(4096))
                struct.pack_into("<Q" if field_off == 32 else "<I", sb, field_off, value)
                sb_len = sb_size()
                struct.pack_into("<I", sb, sb_len - 8, 0)
                struct.pack_into("<I", sb, sb_len - 8, _driver.crc32c(bytes(sb[:sb_len])))
                f.seek(base)
                f.write(sb)
        with pytest.raises(PoolFormatError, match=match):
            pyaccel.open_pool(path)
        os.unlink(path)
        pyaccel.open_pool(path, create=True, size=16 * MiB).close()


def sb_size() -> int:
    """sizeof(struct pa_sb): the offset of its checksum is 8 bytes before the end."""
    return 16 + 8 + 24 + 16 + 8 + 24 + 32 + 8 + 16 * (64 + 16) + 8


def test_corrupt_superblock(shm_dir: Path) -> None:
    path = str(shm_dir / "c.pool")
    with pyaccel.open_pool(path, create=True, size=16 * MiB) as pool:
        load(pool, "m", n=1)
    corrupt(path, 100)
    with pyaccel.open_pool(path) as pool:
        assert pool.status().damage == ["primary superblock"]
        assert ready_names(pool) == {"m"}
        rep = pool.fsck(repair=True)
        assert rep.repaired and any("primary superblock" in line for line in rep.report)
    with pyaccel.open_pool(path) as pool:
        assert pool.status().damage == []
    corrupt(path, 100)
    corrupt(path, 4096 + 100)
    with pytest.raises(PoolCorruptError, match="both superblock copies are damaged"):
        pyaccel.open_pool(path)


def test_corrupt_catalog_copies(shm_dir: Path) -> None:
    path = str(shm_dir / "c.pool")
    with pyaccel.open_pool(path, create=True, size=16 * MiB) as pool:
        load(pool, "a", n=1)
        load(pool, "b", n=1)
        st = pool.status()
    gens = catalog_generations(path, st)
    newest = gens.index(max(gens))
    # the older copy: harmless, reported, rewritten by fsck
    corrupt(path, st.catalog_offset + (1 - newest) * st.catalog_size + 200)
    with pyaccel.open_pool(path) as pool:
        assert "older catalog copy" in pool.status().damage
        assert ready_names(pool) == {"a", "b"}
        assert pool.fsck(repair=True).repaired
    st2 = pyaccel.open_pool(path).status()
    gens = catalog_generations(path, st2)
    newest = gens.index(max(gens))
    # the newest copy: refused, with what is recoverable; fsck rolls back
    corrupt(path, st2.catalog_offset + newest * st2.catalog_size + 200)
    with pytest.raises(PoolCorruptError, match=r"newest catalog copy \(generation \d+\) is damaged; generation \d+ is intact"):
        pyaccel.open_pool(path)
    with pyaccel.open_pool(path, recover=True) as pool:
        rep = pool.fsck(repair=True)
        assert any("rolled back" in line for line in rep.report)
    with pyaccel.open_pool(path) as pool:
        assert pool.status().damage == []
        check_invariants(pool)
    # both copies: nothing can be found any more, and it says so
    st3 = pyaccel.open_pool(path).status()
    corrupt(path, st3.catalog_offset + 200)
    corrupt(path, st3.catalog_offset + st3.catalog_size + 200)
    with pytest.raises(PoolCorruptError, match="both catalog copies are damaged"):
        pyaccel.open_pool(path, recover=True)


def test_corrupt_tensor_data_found_by_verify(shm_dir: Path) -> None:
    path = str(shm_dir / "c.pool")
    with pyaccel.open_pool(path, create=True, size=16 * MiB) as pool:
        load(pool, "m", n=2)
        t = pool.tensors("m")[1]
    corrupt(path, t.offset + 1000)
    with pyaccel.open_pool(path) as pool:
        assert pool.verify() == ["model 'm': tensor 'w1' does not match its checksum"]
        assert pool.verify("m") == ["model 'm': tensor 'w1' does not match its checksum"]


def test_unclean_shutdown_on_persistent_media(tmp_path: Path) -> None:
    """A pool file on disk, in use when the 'machine' went down (another boot id)."""
    path = str(tmp_path / "disk.pool")
    with pyaccel.open_pool(path, create=True, size=16 * MiB) as pool:
        assert pool.status().persistent
        load(pool, "m", n=1)
    # a process dies with the pool open: same boot, nothing to fear
    with subprocess.Popen([sys.executable, "-c", "import sys, pyaccel; p = pyaccel.open_pool(sys.argv[1]);"
                           "print('open', flush=True); sys.stdin.read()", path],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env()) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        child.kill()
        child.wait()
    with pyaccel.open_pool(path) as pool:
        assert not pool.status().clean  # dirty, but this boot: fine
    # the same, across a "reboot"
    env = python_env()
    run_python("import sys, os, signal, pyaccel; p = pyaccel.open_pool(sys.argv[1]); os.kill(os.getpid(), 9)",
               path, check=False)
    env["PYACCEL_BOOT_ID"] = "00000000-0000-4000-8000-000000000001"
    code = ("import sys, pyaccel\n"
            "try:\n    pyaccel.open_pool(sys.argv[1])\nexcept pyaccel.PoolUncleanError as e:\n    print('unclean:', e)\n"
            "p = pyaccel.open_pool(sys.argv[1], recover=True); r = p.fsck(repair=True)\n"
            "print(r.repaired, r.report); p.close()\n"
            "print(sorted(m.name for m in pyaccel.open_pool(sys.argv[1]).models()))\n")
    out = run_python(code, path, env=env).stdout
    assert "unclean: pool" in out and "unclean shutdown" in out
    assert "True" in out and "every tensor is checked" in out
    assert out.strip().endswith("['m']")


def test_tmpfs_pool_is_never_unclean(shm_dir: Path) -> None:
    path = str(shm_dir / "t.pool")
    pyaccel.open_pool(path, create=True, size=16 * MiB).close()
    run_python("import sys, os, pyaccel; p = pyaccel.open_pool(sys.argv[1]); os.kill(os.getpid(), 9)", path,
               check=False)
    env = python_env()
    env["PYACCEL_BOOT_ID"] = "00000000-0000-4000-8000-000000000002"
    run_python("import sys, pyaccel; pyaccel.open_pool(sys.argv[1]).close()", path, env=env)


def test_readonly_pool_refuses_changes(shm_dir: Path) -> None:
    path = str(shm_dir / "r.pool")
    with pyaccel.open_pool(path, create=True, size=16 * MiB) as pool:
        load(pool, "m", n=1)
    with pyaccel.open_pool(path, readonly=True) as pool:
        assert read_model(pool, "m")[0].shape == (16384,)
        with pytest.raises(OSError, match="read-only") as ei:
            pool.evict("m")
        assert ei.value.errno == errno.EROFS
        with pytest.raises(OSError, match="read-only"):
            load(pool, "n", n=1)


def test_injected_failures_leave_the_pool_as_it_was(shm_dir: Path) -> None:
    path = str(shm_dir / "f.pool")
    with pyaccel.open_pool(path, create=True, size=32 * MiB) as pool:
        load(pool, "base", n=2)
        before = ready_names(pool)
        for point in ("write", "flush"):
            for nth in range(1, 30):
                _driver.fault_set(point, nth)
                try:
                    load(pool, "new", n=3)
                except OSError as e:
                    assert e.errno == errno.EIO and "injected" in str(e)
                    assert ready_names(pool) == before
                    check_invariants(pool)
                    continue
                finally:
                    _driver.fault_clear()
                assert ready_names(pool) == before | {"new"}  # got past the failure point
                pool.evict("new")
                break
            else:
                pytest.fail(f"a load took more than 30 {point} events")
        _driver.fault_set("alloc", 1)
        with pytest.raises(PoolFullError, match="injected"):
            load(pool, "new", n=1)
        _driver.fault_clear()
        assert ready_names(pool) == before


def test_ctrl_c_mid_stream_leaves_no_half_model(shm_dir: Path) -> None:
    path = str(shm_dir / "i.pool")
    with pyaccel.open_pool(path, create=True, size=96 * MiB) as pool:
        calls = []

        def progress(done: int, total: int) -> None:
            calls.append(done)
            if len(calls) == 1:
                raise KeyboardInterrupt

        big = [np.ones(16 * MiB // 4, np.float32) for _ in range(4)]
        with pytest.raises(KeyboardInterrupt):
            write_arrays(pool, "big", big, progress=progress)
        assert pool.status().n_loading == 0 and ready_names(pool) == set()
        check_invariants(pool)
