"""The C core through its Cython binding: mappings on every backend, bad input, streams."""

from __future__ import annotations

import errno
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from pyaccel import _driver

from conftest import hugepages_reserved, hugetlbfs_mount, is_root, need_root, run_python

MiB = 1 << 20


def fill(m: _driver._Map, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, m.length, dtype=np.uint8).tobytes()
    m.write(0, data)
    return data


# -- mappings, backend by backend -------------------------------------------


def check_cross_process(path: str, data: bytes, length: int) -> None:
    """A second process maps the same source read-only and sees the same bytes."""
    code = (
        "import sys, zlib; from pyaccel import _driver\n"
        "m = _driver._Map(sys.argv[1], length=int(sys.argv[2]), flags=_driver.MAP_READONLY)\n"
        "print(zlib.crc32(memoryview(m)), m.kind)\n"
    )
    out = run_python(code, path, str(length)).stdout.split()
    assert int(out[0]) == zlib.crc32(data)


def test_tmpfs_mapping(shm_dir: Path) -> None:
    path = str(shm_dir / "a.map")
    with _driver._Map(path, length=4 * MiB, flags=_driver.MAP_CREATE | _driver.MAP_POPULATE) as m:
        assert (m.kind, m.granularity, m.persistent, m.readonly) == ("tmpfs", "byte", False, False)
        data = fill(m, 1)
        m.persist()
        check_cross_process(path, data, 4 * MiB)
        a = np.frombuffer(m, dtype=np.uint8)
        assert a.flags.writeable and bytes(a[:16]) == data[:16]


def test_hugetlbfs_mapping_rounds_to_pages() -> None:
    with hugetlbfs_mount(8) as d:
        path = str(d / "a.map")
        with _driver._Map(path, length=3 * MiB, flags=_driver.MAP_CREATE | _driver.MAP_POPULATE) as m:
            assert m.kind == "hugetlbfs" and m.align == 2 * MiB
            assert m.length == 4 * MiB  # rounded up to the 2 MiB page
            assert m.address % (2 * MiB) == 0
            data = fill(m, 2)
            check_cross_process(path, data, 4 * MiB)


def test_hugetlbfs_shortage_is_an_error_not_sigbus() -> None:
    with hugetlbfs_mount(4) as d:
        free = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())
        with pytest.raises(OSError) as ei:
            _driver._Map(str(d / "big.map"), length=(free + 8) * 2 * MiB, flags=_driver.MAP_CREATE)
        assert ei.value.errno in (errno.ENOMEM, errno.ENOSPC)
        assert "hugepages" in str(ei.value)


def test_loop_block_device_mapping(loopdev: str) -> None:
    with _driver._Map(loopdev) as m:
        assert m.kind == "block" and m.granularity == "page"
        assert m.source["devname"].startswith("loop")
        assert m.persistent is False  # the loop file lives on tmpfs
        data = fill(m, 3)
        m.persist()
        length = m.length
    check_cross_process(loopdev, data, length)
    # what was written through the mapping reached the device itself
    with open(loopdev, "rb") as f:
        assert zlib.crc32(f.read(length)) == zlib.crc32(data)


def test_disk_file_mapping_uses_msync(tmp_path: Path) -> None:
    path = str(tmp_path / "disk.map")
    with _driver._Map(path, length=MiB, flags=_driver.MAP_CREATE) as m:
        assert m.source["kind"] in ("file", "fsdax")
        if m.kind == "file":
            assert m.granularity == "page" and m.persistent
        m.write(100, b"persisted")
    with open(path, "rb") as f:
        f.seek(100)
        assert f.read(9) == b"persisted"


# -- device-DAX: a fake sysfs tree, and the same mapping code on a file twin ---


def make_fake_dax(root: Path, dev: str = "/dev/null", align: int = 2 * MiB,
                  size: int = 4 << 30, pmem: bool = True) -> None:
    st = os.stat(dev)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    base = root / ("devices/platform/ACPI0012:00/ndbus0/region0/dax0.0/dax0.0" if pmem
                   else "devices/platform/hmem.0/dax0.0")
    base.mkdir(parents=True)
    (root / "bus/dax/devices").mkdir(parents=True)
    (root / "dev/char").mkdir(parents=True)
    (root / "class/dax").mkdir(parents=True)
    (root / "bus/dax/devices/dax0.0").symlink_to(base)
    (root / "dev/char" / majmin).symlink_to(base)
    (base / "subsystem").symlink_to(root / "class/dax")
    (base / "uevent").write_text("DEVNAME=dax0.0\n")
    (base / "size").write_text(f"{size}\n")
    (base / "align").write_text(f"{align}\n")
    (base / "numa_node").write_text("0\n")
    (base / "target_node").write_text("2\n")


def test_devdax_classification_from_fake_sysfs(tmp_path: Path) -> None:
    make_fake_dax(tmp_path)
    info = _driver.classify("/dev/null", sysfs_root=str(tmp_path))
    assert info["kind"] == "devdax" and info["devname"] == "dax0.0"
    assert (info["size"], info["align"]) == (4 << 30, 2 * MiB)
    assert (info["numa_node"], info["target_node"]) == (0, 2)
    assert info["persistent"] and info["granularity"] == "cache_line"


@pytest.mark.parametrize("offset,length,match", [
    (4096, 0, "offset 4096 is not a multiple of the devdax alignment"),
    (0, 3 * MiB, "length 3145728 is not a multiple of the devdax alignment"),
    (0, 8 << 30, "past the end"),
])
def test_devdax_alignment_errors(tmp_path: Path, offset: int, length: int, match: str) -> None:
    make_fake_dax(tmp_path)
    with pytest.raises(OSError, match=match) as ei:
        _driver._Map("/dev/null", offset=offset, length=length, sysfs_root=str(tmp_path))
    assert ei.value.errno == errno.EINVAL


def test_devdax_twin_on_a_file(shm_dir: Path) -> None:
    """The device-DAX scenario -- aligned map, write, persist, second process -- on tmpfs."""
    path = str(shm_dir / "twin.map")
    with _driver._Map(path, length=4 * MiB, flags=_driver.MAP_CREATE | _driver.MAP_POPULATE) as m:
        data = fill(m, 9)
        m.write(2 * MiB, b"x" * 300, _driver.MEM_NONTEMPORAL)
        data = data[:2 * MiB] + b"x" * 300 + data[2 * MiB + 300:]
        m.persist(0, 4 * MiB)
        check_cross_process(path, data, 4 * MiB)


@pytest.mark.devdax
def test_real_devdax() -> None:
    devs = sorted(Path("/dev").glob("dax*"))
    if not devs:
        pytest.skip("no /dev/daxX.Y on this machine (device-DAX hardware); the file twin runs instead")
    with _driver._Map(str(devs[0])) as m:  # pragma: no cover - needs hardware
        assert m.kind == "devdax"


# -- bad input ----------------------------------------------------------------


def test_bad_input_errors(shm_dir: Path) -> None:
    path = str(shm_dir / "f.map")
    _driver._Map(path, length=MiB, flags=_driver.MAP_CREATE).close()
    with pytest.raises(FileNotFoundError, match="/nonexistent/x"):
        _driver._Map("/nonexistent/x")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        _driver._Map(str(shm_dir))
    with pytest.raises(OSError, match="not device-DAX") as ei:
        _driver._Map("/dev/null", flags=_driver.MAP_READONLY)
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(OSError, match="length 12345 is not a multiple"):
        _driver._Map(path, length=12345)
    with pytest.raises(OSError, match="offset 8192 .* past the end"):
        _driver._Map(path, offset=8192, length=MiB)
    with pytest.raises(OSError, match="offset 2097152 is past the end"):
        _driver._Map(path, offset=2 * MiB)
    with pytest.raises(OSError, match="not a multiple of the tmpfs alignment"):
        _driver._Map(path, offset=100)
    with pytest.raises(OSError, match="cannot create a read-only mapping"):
        _driver._Map(path, flags=_driver.MAP_CREATE | _driver.MAP_READONLY)
    with _driver._Map(path, flags=_driver.MAP_READONLY) as m:
        with pytest.raises(TypeError, match="read-only"):
            memoryview(m)[0:1] = b"x"
        with pytest.raises(PermissionError):
            m.write(0, b"x")
        a = np.frombuffer(m, dtype=np.uint8)
        assert not a.flags.writeable


def test_read_only_file_opened_for_writing(shm_dir: Path) -> None:
    """A 0444 file opened read-write by an unprivileged user: PermissionError, not a crash."""
    path = shm_dir / "ro.map"
    _driver._Map(str(path), length=MiB, flags=_driver.MAP_CREATE).close()
    path.chmod(0o444)
    shm_dir.chmod(0o755)
    if is_root():
        # import first: the interpreter's own files may not be readable by nobody
        code = ("import os, sys; from pyaccel import _driver\n"
                "os.setgid(65534); os.setuid(65534)\n"
                "try:\n    _driver._Map(sys.argv[1])\nexcept PermissionError as e:\n    print('PermissionError', e)\n"
                "m = _driver._Map(sys.argv[1], flags=_driver.MAP_READONLY); print('ro ok', m.length)\n")
        out = run_python(code, str(path)).stdout
        assert "PermissionError" in out and "cannot open for reading and writing" in out
        assert "ro ok 1048576" in out
    else:
        with pytest.raises(PermissionError, match="cannot open for reading and writing"):
            _driver._Map(str(path))


def test_close_waits_for_live_arrays(shm_dir: Path) -> None:
    m = _driver._Map(str(shm_dir / "c.map"), length=MiB, flags=_driver.MAP_CREATE)
    m.write(0, b"abc")
    a = np.frombuffer(m, dtype=np.uint8)
    m.close()
    assert m.closed
    assert bytes(a[:3]) == b"abc"  # still mapped: no segfault
    with pytest.raises(ValueError, match="closed"):
        m.length
    del a


# -- checksums and streams --------------------------------------------------


def test_crc32c_matches_reference() -> None:
    assert _driver.crc32c(b"123456789") == 0xE3069283
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    whole = _driver.crc32c(data)
    assert _driver.crc32c(data[1000:], _driver.crc32c(data[:1000])) == whole
    assert _driver.crc32c_combine(_driver.crc32c(data[:77]), _driver.crc32c(data[77:]), len(data) - 77) == whole


@pytest.mark.parametrize("via", [_driver.STREAM_VIA_MAP, _driver.STREAM_VIA_WRITE], ids=["map", "pwrite"])
@pytest.mark.parametrize("direct", [_driver.STREAM_DIRECT_NEVER, _driver.STREAM_DIRECT_ALWAYS,
                                    _driver.STREAM_DIRECT_AUTO])
def test_stream_file_into_mapping(tmp_path: Path, shm_dir: Path, direct: int, via: int) -> None:
    """Aligned and misaligned ranges, from a disk file, buffered and O_DIRECT, through the mapping or pwrite."""
    src = tmp_path / "src.bin"
    data = np.random.default_rng(5).integers(0, 256, 9 * MiB + 123, dtype=np.uint8).tobytes()
    src.write_bytes(data)
    ranges = [(0, 4 * MiB), (4096, 3 * MiB + 5), (12345, 2 * MiB), (9 * MiB, 123), (7, 0)]
    with _driver._Map(str(shm_dir / "dst"), length=32 * MiB, flags=_driver.MAP_CREATE) as m:
        s = _driver._Stream(m, threads=3, chunk=MiB, direct=direct, via=via)
        fd = os.open(src, os.O_RDONLY)
        try:
            dst = 0
            for off, n in ranges:
                s.add_file(fd, off, n, dst)
                dst += (n + 4095) // 4096 * 4096 + 4096
            s.run()
        finally:
            os.close(fd)
        buf = memoryview(m)
        dst = 0
        for i, (off, n) in enumerate(ranges):
            assert bytes(buf[dst:dst + n]) == data[off:off + n]
            assert s.crc(i) == _driver.crc32c(data[off:off + n])
            dst += (n + 4095) // 4096 * 4096 + 4096
        assert s.progress() == (sum(n for _, n in ranges),) * 2


def test_stream_direct_reads_really_bypass(tmp_path: Path, shm_dir: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(8 * MiB))
    try:
        os.close(os.open(src, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    with _driver._Map(str(shm_dir / "dst"), length=8 * MiB, flags=_driver.MAP_CREATE) as m:
        s = _driver._Stream(m, direct=_driver.STREAM_DIRECT_ALWAYS)
        fd = os.open(src, os.O_RDONLY)
        s.add_file(fd, 0, 8 * MiB, 0)
        s.run()
        os.close(fd)
        assert s.direct_bytes == 8 * MiB
        assert _driver.crc32c(memoryview(m)) == _driver.crc32c(src.read_bytes())


def test_stream_truncated_source_is_an_error(tmp_path: Path, shm_dir: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(b"x" * 1000)
    with _driver._Map(str(shm_dir / "dst"), length=MiB, flags=_driver.MAP_CREATE) as m:
        s = _driver._Stream(m)
        fd = os.open(src, os.O_RDONLY)
        s.add_file(fd, 0, 5000, 0)
        with pytest.raises(OSError, match="truncated") as ei:
            s.run()
        os.close(fd)
        assert ei.value.errno == errno.EIO


def test_stream_pwrite_refused_on_hugetlbfs() -> None:
    with hugetlbfs_mount(2) as d:
        with _driver._Map(str(d / "h"), length=2 * MiB, flags=_driver.MAP_CREATE) as m:
            with pytest.raises(OSError, match="hugetlbfs has no write"):
                _driver._Stream(m, via=_driver.STREAM_VIA_WRITE)
            s = _driver._Stream(m)  # auto: through the mapping
            s.add_buffer(b"y" * 5000, 0)
            s.run()
            assert bytes(memoryview(m)[:5000]) == b"y" * 5000


def test_stream_refuses_out_of_range_destination(shm_dir: Path) -> None:
    with _driver._Map(str(shm_dir / "dst"), length=MiB, flags=_driver.MAP_CREATE) as m:
        s = _driver._Stream(m)
        with pytest.raises(OSError, match="outside the mapping"):
            s.add_buffer(b"x" * 10, MiB - 5)


def test_populate_and_properties(shm_dir: Path) -> None:
    with _driver._Map(str(shm_dir / "p"), length=2 * MiB, flags=_driver.MAP_CREATE) as m:
        m.populate()
        m.populate(4096, 4096, write=False)
        with pytest.raises(OSError, match="outside the mapping"):
            m.populate(3 * MiB, 1)
        assert _driver.flush_method() in ("clwb", "clflushopt", "clflush", "none")
        assert m.fallback == ""


@pytest.mark.devdax
def test_fsdax_map_sync_or_visible_fallback() -> None:
    """A file on a filesystem mounted with -o dax: MAP_SYNC, or a fallback that says so.

    Its twin (a file on a disk filesystem, msync) is test_disk_file_mapping_uses_msync.
    """
    from pyaccel import discover

    mounts = [d for d in discover.devices() if d.kind == "fsdax" and not getattr(d, "read_only", False)]
    if not mounts:
        pytest.skip("no filesystem mounted with -o dax here (needs pmem or CXL hardware)")
    path = Path(mounts[0].path) / f"pyaccel-test-{os.getpid()}.map"  # pragma: no cover - needs hardware
    try:
        with _driver._Map(str(path), length=2 * MiB, flags=_driver.MAP_CREATE) as m:
            assert m.kind == "fsdax"
            assert (m.sync and m.granularity == "cache_line") or (not m.sync and m.fallback)
    finally:
        path.unlink(missing_ok=True)
