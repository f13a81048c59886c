"""Tests for pyaccel.discover: fake sysfs trees, and this machine's real hugetlbfs and loop devices."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from pyaccel import config, discover
from pyaccel.discover import (
    BlockDevice,
    DaxDevice,
    FsdaxMount,
    HugetlbfsMount,
    TmpfsMount,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (reserves hugepages, mounts, loop devices)")
EMPTY_CONFIG = config.Config()


# ---------------------------------------------------------------------------
# A fake sysfs tree
# ---------------------------------------------------------------------------


def _w(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def make_dax(root: Path, name: str, size: int, driver: str | None, *, numa: int = 0, target: int = 2) -> None:
    """A dax device the way Linux >= 5.10 lays it out: bus/dax/devices/NAME -> devices/.../NAME."""
    dev = root / "devices" / "platform" / "hmem.0" / name
    _w(dev / "size", str(size))
    _w(dev / "align", str(2 << 20))
    _w(dev / "numa_node", str(numa))
    _w(dev / "target_node", str(target))
    _w(dev / "resource", "0x1080000000")
    _link(root / "bus" / "dax" / "devices" / name, dev)
    if driver:
        _link(dev / "driver", root / "bus" / "dax" / "drivers" / driver)


def make_hugepages(root: Path, pagesize_kb: int, total: int, free: int, resv: int = 0, surplus: int = 0,
                   nodes: dict[int, tuple[int, int]] | None = None) -> None:
    d = root / "kernel" / "mm" / "hugepages" / f"hugepages-{pagesize_kb}kB"
    for f, v in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv),
                 ("surplus_hugepages", surplus), ("nr_overcommit_hugepages", 0)):
        _w(d / f, str(v))
    for node, (ntotal, nfree) in (nodes or {}).items():
        nd = root / "devices" / "system" / "node" / f"node{node}" / "hugepages" / f"hugepages-{pagesize_kb}kB"
        _w(nd / "nr_hugepages", str(ntotal))
        _w(nd / "free_hugepages", str(nfree))
        _w(nd / "surplus_hugepages", "0")


def make_block(root: Path, name: str, sectors: int, majmin: str, *, ro: bool = False,
               backing: str | None = None, holders: tuple[str, ...] = ()) -> None:
    dev = root / "devices" / "virtual" / "block" / name
    _w(dev / "size", str(sectors))
    _w(dev / "ro", "1" if ro else "0")
    _w(dev / "dev", majmin)
    (dev / "holders").mkdir(parents=True, exist_ok=True)
    for h in holders:
        (dev / "holders" / h).mkdir()
    if name.startswith("loop"):
        (dev / "loop").mkdir()
        if backing is not None:
            _w(dev / "loop" / "backing_file", backing)
    _link(root / "block" / name, dev)


MOUNTINFO = """\
22 1 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw,size=1048576k
40 27 0:40 / /mnt/huge rw,relatime - hugetlbfs nodev rw,gid=990,mode=1770,pagesize=2M
41 27 0:41 / /mnt/huge\\0401g rw,relatime - hugetlbfs nodev rw,pagesize=1024M,size=2147483648
42 27 0:42 / /mnt/huge-ro ro,relatime - hugetlbfs nodev ro,pagesize=2M
43 27 259:0 / /mnt/pmem rw,relatime - ext4 /dev/pmem0 rw,dax=always
44 27 259:1 / /mnt/pmem1 rw,relatime - xfs /dev/pmem1 rw,attr2,dax=inode
45 27 259:2 / /mnt/pmem2 rw,relatime - ext4 /dev/pmem2 rw,dax
46 27 259:3 / /mnt/plain rw,relatime - ext4 /dev/pmem3 rw,dax=never
47 27 1:1 / /mnt/ram1 rw,relatime - ext4 /dev/ram1 rw
"""


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    """A fake machine: (sysfs root, mountinfo file)."""
    root = tmp_path / "sys"
    make_dax(root, "dax0.0", 16 << 30, "device_dax", numa=0, target=2)
    make_dax(root, "dax1.0", 32 << 30, "kmem", numa=1, target=3)
    make_dax(root, "dax2.0", 8 << 30, None)
    (root / "bus" / "dax" / "devices" / "dax_region0").mkdir()  # not a device: ignored
    make_hugepages(root, 2048, total=512, free=500, resv=10, nodes={0: (256, 250), 1: (256, 250)})
    make_hugepages(root, 1048576, total=2, free=1, nodes={0: (2, 1), 1: (0, 0)})
    make_block(root, "nullb0", 2 << 20, "251:0")
    make_block(root, "nullb1", 2 << 20, "251:1")
    _w(root / "kernel" / "config" / "nullb" / "pool" / "index", "0")
    _w(root / "kernel" / "config" / "nullb" / "pool" / "memory_backed", "1")
    _w(root / "module" / "null_blk" / "parameters" / "memory_backed", "0")
    make_block(root, "ram0", 1 << 20, "1:0")
    make_block(root, "ram1", 1 << 20, "1:1")  # mounted on /mnt/ram1
    make_block(root, "loop0", 4096, "7:0", backing="/dev/shm/pool.img (deleted)")
    make_block(root, "loop1", 4096, "7:1", backing="/var/lib/disk.img")
    make_block(root, "loop2", 0, "7:2")  # unbound: not listed
    make_block(root, "loop3", 4096, "7:3", backing="/dev/shm/lvm.img", holders=("dm-0",))
    make_block(root, "loop4", 4096, "7:4", backing="/dev/shm/ro.img", ro=True)
    make_block(root, "vda", 1 << 30, "254:0")  # a disk: never listed
    make_block(root, "zram0", 1 << 20, "252:0")  # not listed
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    return root, mi


def by_path(devs: list[discover.Device]) -> dict[str, discover.Device]:
    return {d.path: d for d in devs}


# ---------------------------------------------------------------------------
# Fake sysfs
# ---------------------------------------------------------------------------


def test_devdax_both_modes(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    dax = [d for d in discover.devices(root, mountinfo=mi) if isinstance(d, DaxDevice)]
    assert [d.name for d in dax] == ["dax0.0", "dax1.0", "dax2.0"]
    d0, d1, d2 = dax
    assert d0 == DaxDevice(kind="devdax", path="/dev/dax0.0", size=16 << 30, name="dax0.0", mode="devdax",
                           driver="device_dax", align=2 << 20, numa_node=0, target_node=2)
    assert (d1.mode, d1.driver, d1.numa_node, d1.target_node) == ("system-ram", "kmem", 1, 3)
    assert (d2.mode, d2.driver) == ("unbound", None)


def test_devdax_old_kernel_layout(tmp_path: Path) -> None:
    """Before 5.1 dax devices were a class, with alignment only on the region; -1 means no node."""
    root = tmp_path / "sys"
    dev = root / "devices" / "platform" / "e820_pmem" / "ndbus0" / "region0" / "dax0.0"
    _w(dev / "size", str(1 << 30))
    _w(dev / "numa_node", "-1")
    _w(dev.parent / "dax_region" / "align", str(1 << 30))
    _link(root / "class" / "dax" / "dax0.0", dev)
    (d,) = discover.devices(root, mountinfo=tmp_path / "none")
    assert isinstance(d, DaxDevice)
    assert (d.mode, d.align, d.numa_node, d.target_node) == ("devdax", 1 << 30, None, None)


def test_hugepages_per_size_and_node(fake: tuple[Path, Path]) -> None:
    root, _ = fake
    hp = discover.hugepages(root)
    assert [h.pagesize for h in hp] == [2 << 20, 1 << 30]
    h2, h1g = hp
    assert (h2.total, h2.free, h2.reserved, h2.available) == (512, 500, 10, 490)
    assert h2.nodes == {0: discover.HugePagesNode(256, 250, 0), 1: discover.HugePagesNode(256, 250, 0)}
    assert h1g.nodes[1].total == 0 and h1g.nodes[0].free == 1


def test_hugetlbfs_mounts(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    devs = by_path(discover.devices(root, mountinfo=mi))
    m = devs["/mnt/huge"]
    assert isinstance(m, HugetlbfsMount)
    assert (m.pagesize, m.total_pages, m.free_pages, m.reserved_pages, m.available_pages) == (2 << 20, 512, 500, 10, 490)
    assert (m.gid, m.mode, m.size, m.read_only) == (990, 0o1770, 512 * (2 << 20), False)
    big = devs["/mnt/huge 1g"]  # \040 in mountinfo is a space
    assert isinstance(big, HugetlbfsMount)
    assert (big.pagesize, big.free_pages, big.size_limit, big.size) == (1 << 30, 1, 2 << 30, 2 << 30)
    ro = devs["/mnt/huge-ro"]
    assert isinstance(ro, HugetlbfsMount) and ro.read_only


def test_fsdax_mounts(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    fs = [d for d in discover.devices(root, mountinfo=mi) if isinstance(d, FsdaxMount)]
    assert [(d.path, d.source, d.fstype, d.dax_mode) for d in fs] == [
        ("/mnt/pmem", "/dev/pmem0", "ext4", "always"),
        ("/mnt/pmem1", "/dev/pmem1", "xfs", "inode"),
        ("/mnt/pmem2", "/dev/pmem2", "ext4", "always"),  # plain "dax" is the old dax=always
    ]


def test_block_devices(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    blk = {d.name: d for d in discover.devices(root, mountinfo=mi) if isinstance(d, BlockDevice)}
    assert sorted(blk) == ["loop0", "loop1", "loop3", "loop4", "nullb0", "nullb1", "ram0", "ram1"]
    assert blk["nullb0"].memory_backed and blk["nullb0"].driver == "null_blk"  # configfs memory_backed=1
    assert not blk["nullb1"].memory_backed  # module parameter memory_backed=0: discards writes
    assert blk["nullb0"].size == (2 << 20) * 512
    assert blk["ram0"].memory_backed and blk["ram0"].driver == "brd" and blk["ram0"].in_use is None
    assert blk["ram1"].in_use == "/dev/ram1 is mounted on /mnt/ram1"
    assert blk["loop0"].backing_file == "/dev/shm/pool.img" and blk["loop0"].memory_backed
    assert not blk["loop1"].memory_backed  # backing file on ext4
    assert blk["loop3"].in_use == "held by dm-0"
    assert blk["loop4"].read_only


def test_tmpfs_and_order(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    devs = discover.devices(root, mountinfo=mi)
    kinds = [d.kind for d in devs]
    assert kinds == sorted(kinds, key=discover.KINDS.index)
    (shm,) = [d for d in devs if isinstance(d, TmpfsMount)]
    assert shm.path == "/dev/shm" and shm.size > 0


def test_env_overrides(fake: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, mi = fake
    monkeypatch.setenv("PYACCEL_SYSFS_ROOT", str(root))
    monkeypatch.setenv("PYACCEL_MOUNTINFO", str(mi))
    assert discover.devices() == discover.devices(root, mountinfo=mi)
    assert discover.resolve_sysfs_root() == root


def test_empty_tree(tmp_path: Path) -> None:
    assert discover.devices(tmp_path, mountinfo=tmp_path / "missing") == []
    assert discover.hugepages(tmp_path) == []


# ---------------------------------------------------------------------------
# Default pool
# ---------------------------------------------------------------------------


def test_default_skips_devdax_without_node_or_mode(fake: tuple[Path, Path]) -> None:
    root, mi = fake
    # /dev/dax0.0 does not exist here: it is skipped with the reason, and so are the others.
    choice = discover.default_pool(config=EMPTY_CONFIG, sysfs_root=root, mountinfo=mi)
    assert any("dax0.0" in s and "does not exist" in s for s in choice.skipped)
    assert any("dax1.0 is in system-ram mode" in s for s in choice.skipped)


def _order_fixture(tmp_path: Path) -> dict[str, discover.Device]:
    for n in ("dax0.0", "nullb0", "huge", "pmem", "shm"):
        p = tmp_path / n
        if n in ("dax0.0", "nullb0"):
            p.write_bytes(b"")
        else:
            p.mkdir()
    return {
        "devdax": DaxDevice("devdax", str(tmp_path / "dax0.0"), 1 << 30, name="dax0.0", mode="devdax"),
        "hugetlbfs": HugetlbfsMount("hugetlbfs", str(tmp_path / "huge"), 4 << 20, pagesize=2 << 20,
                                    total_pages=2, free_pages=2),
        "fsdax": FsdaxMount("fsdax", str(tmp_path / "pmem"), 1 << 30, dax_mode="always"),
        "blockdev": BlockDevice("blockdev", str(tmp_path / "nullb0"), 1 << 30, name="nullb0",
                                driver="null_blk", memory_backed=True),
        "tmpfs": TmpfsMount("tmpfs", str(tmp_path / "shm"), 1 << 30),
    }


@pytest.mark.parametrize("drop", [0, 1, 2, 3, 4])
def test_default_order_of_preference(tmp_path: Path, drop: int) -> None:
    devs = _order_fixture(tmp_path)
    kinds = list(discover.KINDS)
    remaining = [devs[k] for k in kinds[drop:]]
    choice = discover.default_pool(remaining, config=EMPTY_CONFIG)
    want = kinds[drop]
    if want == "tmpfs":
        assert (choice.path, choice.kind, choice.source) == (discover.FALLBACK_POOL, "tmpfs", "fallback")
        return
    assert choice.kind == want and choice.source == "discovery"
    dev = devs[want]
    if want in ("devdax", "blockdev"):
        assert choice.path == dev.path and choice.needs_create
        assert "pyaccel pool create" in choice.reason
    else:
        assert choice.path == os.path.join(dev.path, "pyaccel.pool") and not choice.needs_create


def test_default_skips_unfit(tmp_path: Path) -> None:
    devs = _order_fixture(tmp_path)
    hp = devs["hugetlbfs"]
    assert isinstance(hp, HugetlbfsMount)
    hp.free_pages = 0
    fs = devs["fsdax"]
    assert isinstance(fs, FsdaxMount)
    fs.dax_mode = "inode"
    blk = devs["blockdev"]
    assert isinstance(blk, BlockDevice)
    blk.in_use = "held by dm-0"
    choice = discover.default_pool([hp, fs, blk], config=EMPTY_CONFIG)
    assert choice.path == discover.FALLBACK_POOL
    assert [s.split(":")[0] for s in choice.skipped] == [f"hugetlbfs {hp.path}", f"fsdax {fs.path}", f"blockdev {blk.path}"]
    assert "no free 2 MiB hugepages" in choice.skipped[0]
    # An existing pool file holds its pages already: no free pages is then fine.
    (Path(hp.path) / "pyaccel.pool").write_bytes(b"")
    assert discover.default_pool([hp], config=EMPTY_CONFIG).kind == "hugetlbfs"


def test_default_skips_without_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devs = _order_fixture(tmp_path)
    real_access = os.access
    dax_path = devs["devdax"].path
    monkeypatch.setattr(discover.os, "access", lambda p, m: False if p == dax_path else real_access(p, m))
    choice = discover.default_pool([devs["devdax"], devs["hugetlbfs"]], config=EMPTY_CONFIG)
    assert choice.kind == "hugetlbfs"
    assert "no read-write permission" in choice.skipped[0] and "group pyaccel" in choice.skipped[0]


@needs_root
def test_default_skips_without_permission_as_nobody(tmp_path: Path) -> None:
    """For real: a root-only 0660 device file is skipped for user nobody."""
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs /usr/bin/python3 (the test interpreter is not readable by nobody)")
    tmp = Path(tempfile.mkdtemp(prefix="pyaccel-perm-", dir="/tmp"))
    try:
        tmp.chmod(0o755)
        dev = tmp / "dax0.0"
        dev.write_bytes(b"")
        dev.chmod(0o660)
        shm = tmp / "shm"
        shm.mkdir(mode=0o777)
        shm.chmod(0o777)
        pkg = tmp / "pkg"
        shutil.copytree(Path(discover.__file__).parent, pkg / "pyaccel", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from pyaccel import discover as d, config as c;"
            "devs=[d.DaxDevice('devdax', sys.argv[2], 1, name='dax0.0', mode='devdax'),"
            " d.TmpfsMount('tmpfs', sys.argv[3], 1)];"
            "ch=d.default_pool(devs, config=c.Config()); print(ch.path); print(ch.skipped[0])"
        )
        out = subprocess.run(["/usr/bin/python3", "-c", code, str(pkg), str(dev), str(shm)],
                             user=65534, group=65534, extra_groups=[], capture_output=True, text=True,
                             check=True, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
        path, skipped = out.stdout.splitlines()
        assert path == discover.FALLBACK_POOL
        assert "no read-write permission" in skipped
    finally:
        shutil.rmtree(tmp)


def test_default_pinned_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devs = _order_fixture(tmp_path)
    cfg = config.Config(path="/srv/pool.bin", size=1 << 30, sources={"path": "environment PYACCEL_POOL", "size": "/etc/pyaccel.conf"})
    choice = discover.default_pool(list(devs.values()), config=cfg)
    assert (choice.path, choice.kind, choice.source, choice.size, choice.needs_create) == (
        "/srv/pool.bin", None, "environment PYACCEL_POOL", 1 << 30, False)
    # A pinned raw device is flagged too.
    cfg.path = "/dev/null"
    assert discover.default_pool([], config=cfg).needs_create
    # Through the environment, end to end.
    monkeypatch.setenv("PYACCEL_POOL", str(tmp_path / "p.pool"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert discover.default_pool_path(devs=[]) == str(tmp_path / "p.pool")


# ---------------------------------------------------------------------------
# The real machine
# ---------------------------------------------------------------------------


def test_real_machine_smoke() -> None:
    """Whatever this machine has, discovery runs and reports consistent values."""
    for d in discover.devices():
        assert d.kind in discover.KINDS and d.size >= 0
    assert discover.default_pool(config=EMPTY_CONFIG).path


def test_pyudev_and_plain_scan_agree() -> None:
    """On the live /sys, pyudev enumeration and the plain sysfs scan find the same devices."""
    pytest.importorskip("pyudev")
    root = discover.resolve_sysfs_root("/sys")
    via_udev = discover._udev_list("block", DEVTYPE="disk")
    assert via_udev is not None, "pyudev could not enumerate /sys without a udev daemon"
    plain = discover._scan([root / "block"])
    assert sorted(d.name for d in via_udev) == sorted(d.name for d in plain)
    assert [d.name for d in discover._block_sysdevs(root)] == [
        d.name for d in sorted(plain, key=lambda d: discover._natural(d.name)) if discover._BLOCK_NAME.match(d.name)
    ]


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def reserved_2m_pages(extra: int) -> Iterator[int]:
    """Add ``extra`` 2 MiB hugepages to the pool; restore the original count afterwards."""
    nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    if not os.path.exists(nr):
        pytest.skip("this kernel has no 2 MiB hugepages")
    orig = _read_int(nr)
    try:
        _write(nr, orig + extra)
        if _read_int(nr) < orig + extra:
            pytest.skip(f"the kernel gave only {_read_int(nr) - orig} of {extra} 2 MiB pages")
        yield orig
    finally:
        _write(nr, orig)
        assert _read_int(nr) == orig, "could not restore nr_hugepages"


@contextlib.contextmanager
def hugetlbfs_mount(options: str) -> Iterator[str]:
    mnt = tempfile.mkdtemp(prefix="pyaccel-huge-")
    try:
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", options, "nodev", mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        os.rmdir(mnt)


@needs_root
@pytest.mark.root
@pytest.mark.hugetlbfs
def test_real_hugetlbfs() -> None:
    """Reserve 2 pages, mount hugetlbfs, see it with the right free count, use one page, restore."""
    import mmap

    with reserved_2m_pages(2), hugetlbfs_mount("pagesize=2M,mode=0770") as mnt:
        hp = {h.pagesize: h for h in discover.hugepages()}[2 << 20]
        (m,) = [d for d in discover.devices() if d.path == mnt]
        assert isinstance(m, HugetlbfsMount)
        assert m.pagesize == 2 << 20 and m.mode == 0o770
        assert m.total_pages == hp.total and m.free_pages == hp.free >= 2
        before = m.free_pages
        fd = os.open(os.path.join(mnt, "probe"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, 2 << 20)
            with mmap.mmap(fd, 2 << 20) as mm:
                mm[0] = 1  # fault one huge page in
                (m2,) = [d for d in discover.devices() if d.path == mnt]
                assert isinstance(m2, HugetlbfsMount)
                assert m2.free_pages == before - 1
        finally:
            os.close(fd)
            os.unlink(os.path.join(mnt, "probe"))
        choice = discover.default_pool(config=EMPTY_CONFIG)
        # No device-DAX here, so a hugetlbfs mount with free pages must win (ours or another).
        if not any(isinstance(d, DaxDevice) and d.mode == "devdax" for d in discover.devices()):
            assert choice.kind == "hugetlbfs"


@needs_root
@pytest.mark.root
@pytest.mark.blockdev
def test_real_loop_device_on_tmpfs() -> None:
    """A loop device over a /dev/shm file is a memory-backed block device (and over disk, not)."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    img = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="pyaccel-loop-", delete=False)
    img.truncate(4 << 20)
    img.close()
    try:
        dev = subprocess.run(["losetup", "--find", "--show", img.name], capture_output=True, text=True)
        if dev.returncode != 0:
            pytest.skip(f"losetup failed: {dev.stderr.strip()}")
        node = dev.stdout.strip()
        try:
            (b,) = [d for d in discover.devices() if d.path == node]
            assert isinstance(b, BlockDevice)
            assert (b.driver, b.backing_file, b.memory_backed, b.size, b.in_use) == ("loop", img.name, True, 4 << 20, None)
        finally:
            subprocess.run(["losetup", "-d", node], check=True)
    finally:
        os.unlink(img.name)


def test_module_imports_only_stdlib_pyudev_errors() -> None:
    """discover and config import only the stdlib, pyudev and pyaccel.errors (never the extension)."""
    import ast

    allowed_pkg = {"pyudev"}
    for mod in (discover, config):
        tree = ast.parse(Path(mod.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only .errors and .config
                    assert node.module in ("errors", "config") or (node.module is None and
                           {a.name for a in node.names} <= {"config", "errors"}), ast.dump(node)
                    continue
                names = [node.module or ""]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                assert top in sys.stdlib_module_names or top in allowed_pkg, f"{mod.__name__} imports {n}"
