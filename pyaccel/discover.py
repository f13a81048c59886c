"""Discovery: what fast memory this machine offers, and where the default pool goes.

:func:`devices` *enumerates* what exists -- device-DAX, hugetlbfs mounts, fsdax
mounts, memory-backed block devices and the ``/dev/shm`` tmpfs -- from sysfs and
the mount table.  It does not classify a given path: the C core does that from
``stat`` and sysfs when a pool is opened, the way pyudev's
enumeration is kept apart from libpmem2's ``pmem2_get_type_from_stat``.

Where the kernel's device model is reached (device-DAX and block devices),
pyudev enumerates the devices; attributes are then read as plain sysfs files, and
a plain directory scan is the fallback when pyudev is missing, fails, or the
sysfs root is not the live ``/sys``.

Test and emulation hooks
------------------------
``PYACCEL_SYSFS_ROOT``
    Read sysfs from this directory instead of ``/sys`` (the C core honours the
    same variable).  A fake tree only needs the files discovery reads:
    ``bus/dax/devices/daxX.Y/{size,align,numa_node,target_node,driver}``,
    ``kernel/mm/hugepages/hugepages-*kB/*``,
    ``devices/system/node/nodeN/hugepages/hugepages-*kB/*``,
    ``block/{nullbN,ramN,loopN}/{size,ro,dev,holders/,loop/backing_file}``,
    ``kernel/config/nullb/*/{index,memory_backed}``,
    ``module/null_blk/parameters/memory_backed``.
``PYACCEL_MOUNTINFO``
    Read the mount table from this file instead of ``/proc/self/mountinfo``.

The default pool
----------------
:func:`default_pool` returns a :class:`PoolChoice`.  A path pinned by
``PYACCEL_POOL``, ``~/.config/pyaccel.conf`` or ``/etc/pyaccel.conf`` (in that
order, see :mod:`pyaccel.config`) wins.  Otherwise the first usable of, in this
order: a device-DAX in devdax mode, a hugetlbfs mount with free pages, an fsdax
mount, a memory-backed block device that nothing else uses, and finally
``/dev/shm/pyaccel.pool``.  "Usable" means this process may read and write it
(so a ``/dev/dax0.0`` owned by group ``pyaccel`` is skipped for a user outside
the group, with the reason in :attr:`PoolChoice.skipped`).

A whole device (device-DAX or a block device) is returned with
``needs_create=True``: pyaccel never writes a pool onto a raw device implicitly,
since that would destroy whatever it holds.  If it does not hold a pyaccel pool
yet, ``pyaccel pool create PATH`` must format it first (that command refuses a
device that holds other data unless ``--force``).  Pool files on hugetlbfs,
fsdax and tmpfs are created on first open and have ``needs_create=False``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from . import config as _config

__all__ = [
    "Device",
    "DaxDevice",
    "HugetlbfsMount",
    "FsdaxMount",
    "BlockDevice",
    "TmpfsMount",
    "HugePages",
    "HugePagesNode",
    "PoolChoice",
    "KINDS",
    "DEFAULT_POOL_FILE",
    "FALLBACK_POOL",
    "resolve_sysfs_root",
    "devices",
    "hugepages",
    "default_pool",
    "default_pool_path",
    "unusable_reason",
]

#: Device kinds, in the order of preference for the default pool.
KINDS = ("devdax", "hugetlbfs", "fsdax", "blockdev", "tmpfs")

#: The pool file name used inside a hugetlbfs, fsdax or tmpfs mount.
DEFAULT_POOL_FILE = "pyaccel.pool"

#: The last-resort default pool: a file on tmpfs.
FALLBACK_POOL = "/dev/shm/" + DEFAULT_POOL_FILE

ENV_SYSFS = "PYACCEL_SYSFS_ROOT"
ENV_MOUNTINFO = "PYACCEL_MOUNTINFO"

_DAX_NAME = re.compile(r"^dax\d+\.\d+$")
_BLOCK_NAME = re.compile(r"^(nullb|ram|loop)(\d+)$")
_BLOCK_DRIVER = {"nullb": "null_blk", "ram": "brd", "loop": "loop"}
_HP_DIR = re.compile(r"^hugepages-(\d+)kB$")
_MEMORY_FSTYPES = ("tmpfs", "hugetlbfs", "ramfs")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass
class Device:
    """Something a pool can live on.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    path : str
        ``/dev/daxX.Y`` or ``/dev/nullbN`` for devices, the mount point for mounts.
    size : int
        Capacity in bytes (0 when unknown).
    """

    kind: str
    path: str
    size: int


@dataclass
class DaxDevice(Device):
    """A device-DAX instance (``/sys/bus/dax/devices/daxX.Y``); CXL memory and pmem appear so.

    Attributes
    ----------
    name : str
        ``daxX.Y``.
    mode : str
        ``"devdax"`` (bound to ``device_dax``: ``path`` can be mapped),
        ``"system-ram"`` (bound to ``kmem``: onlined as a memory-only NUMA node, no device file),
        or ``"unbound"``.
    driver : str or None
        The bound driver's name.
    align : int or None
        Mapping alignment in bytes (a mapping must be a multiple of it).
    numa_node : int or None
        The NUMA node closest to the device (None when the kernel says -1).
    target_node : int or None
        The node the memory would join in system-ram mode.
    """

    name: str = ""
    mode: str = "unbound"
    driver: str | None = None
    align: int | None = None
    numa_node: int | None = None
    target_node: int | None = None


@dataclass
class HugePagesNode:
    """Hugepages of one size on one NUMA node."""

    total: int
    free: int
    surplus: int


@dataclass
class HugePages:
    """Hugepages of one size, system-wide and per NUMA node.

    Attributes
    ----------
    pagesize : int
        Bytes per page (2097152, 1073741824, ...).
    total, free, reserved, surplus, overcommit : int
        ``nr_hugepages``, ``free_hugepages`` (reserved pages included),
        ``resv_hugepages``, ``surplus_hugepages``, ``nr_overcommit_hugepages``.
    nodes : dict of int to HugePagesNode
        Per NUMA node (empty when the kernel has no node directories).
    """

    pagesize: int
    total: int = 0
    free: int = 0
    reserved: int = 0
    surplus: int = 0
    overcommit: int = 0
    nodes: dict[int, HugePagesNode] = field(default_factory=dict)

    @property
    def available(self) -> int:
        """Pages a new mapping can still get: free minus those promised to existing mappings."""
        return max(self.free - self.reserved, 0)


@dataclass
class HugetlbfsMount(Device):
    """A hugetlbfs mount and the pages of its page size.

    ``size`` is the bytes of hugepages of this size (``total_pages * pagesize``),
    capped by the mount's ``size=`` limit when there is one.

    Attributes
    ----------
    pagesize : int
        The mount's page size in bytes.
    total_pages, free_pages, reserved_pages, surplus_pages : int
        The system-wide counts for that page size (a mount does not own pages).
    size_limit : int or None
        The mount's ``size=`` option in bytes.
    uid, gid : int or None
        The mount's ``uid=``/``gid=`` options.
    mode : int or None
        The mount's ``mode=`` option (root directory permissions).
    read_only : bool
        Mounted ``ro``.
    """

    pagesize: int = 0
    total_pages: int = 0
    free_pages: int = 0
    reserved_pages: int = 0
    surplus_pages: int = 0
    size_limit: int | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    read_only: bool = False

    @property
    def available_pages(self) -> int:
        """Free pages not reserved by existing mappings."""
        return max(self.free_pages - self.reserved_pages, 0)


@dataclass
class FsdaxMount(Device):
    """A filesystem mounted with DAX (``-o dax`` / ``dax=always``, or ``dax=inode``).

    Attributes
    ----------
    source : str
        The mounted block device (``/dev/pmem0``).
    fstype : str
        ``ext4``, ``xfs``, ...
    dax_mode : str
        ``"always"`` (every file is DAX) or ``"inode"`` (only files flagged
        ``FS_XFLAG_DAX``; not chosen as a default pool).
    free : int
        Free bytes (0 when the mount point cannot be stat'ed).
    read_only : bool
        Mounted ``ro``.
    """

    source: str = ""
    fstype: str = ""
    dax_mode: str = "always"
    free: int = 0
    read_only: bool = False


@dataclass
class BlockDevice(Device):
    """A block device that can emulate fast memory: null_blk, brd, or loop.

    Attributes
    ----------
    name : str
        ``nullb0``, ``ram0``, ``loop3``.
    driver : str
        ``"null_blk"``, ``"brd"`` or ``"loop"``.
    memory_backed : bool
        Data lives in RAM: always for brd, for null_blk with ``memory_backed=1``
        (otherwise it discards writes), for loop when the backing file is on tmpfs,
        hugetlbfs or ramfs.
    backing_file : str or None
        A loop device's backing file.
    read_only : bool
        The kernel's ``ro`` flag.
    in_use : str or None
        Why the device is in use by something else (mounted, swap, held by
        device-mapper), None when nothing was seen using it.
    """

    name: str = ""
    driver: str = ""
    memory_backed: bool = False
    backing_file: str | None = None
    read_only: bool = False
    in_use: str | None = None


@dataclass
class TmpfsMount(Device):
    """The tmpfs at ``/dev/shm``, the emulation default.

    Attributes
    ----------
    free : int
        Free bytes.
    """

    free: int = 0


@dataclass
class PoolChoice:
    """Where the default pool is, and why.

    Attributes
    ----------
    path : str
        The pool: a device (``/dev/dax0.0``) or a file (``/dev/hugepages/pyaccel.pool``).
    kind : str or None
        The discovered device's kind; None for a pinned path (the C core classifies it).
    source : str
        ``"environment PYACCEL_POOL"``, a config file path, ``"discovery"``, or ``"fallback"``.
    needs_create : bool
        True for a raw device (device-DAX or block device): pyaccel never formats
        it implicitly; ``pyaccel pool create PATH`` must be run first unless it
        already holds a pyaccel pool.
    size : int or None
        The configured pool size in bytes, if any.
    partitions : dict of str to int
        The configured partitions.
    device : Device or None
        The discovered device the path is on.
    reason : str
        One line saying why this path was chosen.
    skipped : list of str
        Better-ranked candidates that were passed over, each with the reason.
    """

    path: str
    kind: str | None
    source: str
    needs_create: bool = False
    size: int | None = None
    partitions: dict[str, int] = field(default_factory=dict)
    device: Device | None = None
    reason: str = ""
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Small readers
# ---------------------------------------------------------------------------


def resolve_sysfs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the sysfs root: ``root``, else ``$PYACCEL_SYSFS_ROOT``, else ``/sys``."""
    if root is None:
        root = os.environ.get(ENV_SYSFS) or "/sys"
    return Path(root)


def _is_live(root: Path) -> bool:
    """Whether ``root`` is the kernel's own sysfs (so pyudev and /proc describe the same machine)."""
    try:
        return os.path.samefile(root, "/sys")
    except OSError:
        return False


def _read(path: Path) -> str | None:
    """Read a sysfs attribute, stripped; None if absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def _read_int(path: Path, base: int = 0) -> int | None:
    """Read an integer attribute (decimal, or ``0x`` hex with base 0); None if absent or not a number."""
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0], base) if text else None
    except (ValueError, IndexError):
        return None


def _node(value: int | None) -> int | None:
    """The kernel reports 'no NUMA node' as -1."""
    return None if value is None or value < 0 else value


def _driver_name(devdir: Path) -> str | None:
    """Name of the driver bound to a sysfs device (the ``driver`` symlink's target)."""
    try:
        return os.path.basename(os.readlink(devdir / "driver"))
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Mount table
# ---------------------------------------------------------------------------


@dataclass
class _Mount:
    mountpoint: str
    fstype: str
    source: str
    majmin: str
    options: dict[str, str]


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _parse_options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return out


def _mounts(mountinfo: str | os.PathLike[str] | None = None) -> list[_Mount]:
    """Parse ``/proc/self/mountinfo`` (or ``$PYACCEL_MOUNTINFO``, or ``mountinfo``)."""
    path = mountinfo or os.environ.get(ENV_MOUNTINFO) or "/proc/self/mountinfo"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            fstype, source, superopts = fields[sep + 1 : sep + 4]
        except ValueError:
            continue  # not a mountinfo line
        # Per-mount options (ro, nodev, ...) first; the superblock's (pagesize=, dax) override.
        options = _parse_options(fields[5])
        options.update(_parse_options(superopts))
        mounts.append(_Mount(_unescape(fields[4]), fstype, _unescape(source), fields[2], options))
    return mounts


def _mount_of(path: str, mounts: Sequence[_Mount]) -> _Mount | None:
    """The mount holding ``path`` (longest mount-point prefix; later mounts shadow earlier)."""
    best: _Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/"):
                best = m
    return best


def _statvfs(path: str) -> tuple[int, int]:
    """(size, free) bytes of the filesystem at ``path``; (0, 0) when it cannot be stat'ed."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _size_option(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return _config.parse_size(text)
    except _config.ConfigError:
        return None  # e.g. "size=50%": not a byte count


# ---------------------------------------------------------------------------
# Enumeration through pyudev or a plain scan
# ---------------------------------------------------------------------------


@dataclass
class _SysDev:
    name: str
    syspath: Path
    devnode: str
    driver: str | None


def _udev_list(subsystem: str, **props: str) -> list[_SysDev] | None:
    """Enumerate a subsystem with pyudev; None when pyudev is missing or fails."""
    try:
        import pyudev
    except ImportError:
        return None
    try:
        ctx = pyudev.Context()
        out = []
        for d in ctx.list_devices(subsystem=subsystem, **props):
            out.append(_SysDev(d.sys_name, Path(d.sys_path), d.device_node or "/dev/" + d.sys_name, d.driver))
        return out
    except Exception:  # noqa: BLE001 - libudev errors vary; the plain scan below is the fallback
        return None


def _scan(dirs: Sequence[Path]) -> list[_SysDev]:
    """Enumerate devices as the entries (usually symlinks) of sysfs directories; first directory wins."""
    seen: dict[str, _SysDev] = {}
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            if name not in seen:
                p = d / name
                seen[name] = _SysDev(name, p, "/dev/" + name, _driver_name(p))
    return list(seen.values())


def _dax_sysdevs(root: Path) -> list[_SysDev]:
    devs = _udev_list("dax") if _is_live(root) else None
    if devs is None:
        # /sys/bus/dax since Linux 5.1; /sys/class/dax before.
        devs = _scan([root / "bus" / "dax" / "devices", root / "class" / "dax"])
    return sorted((d for d in devs if _DAX_NAME.match(d.name)), key=lambda d: _natural(d.name))


def _block_sysdevs(root: Path) -> list[_SysDev]:
    devs = _udev_list("block", DEVTYPE="disk") if _is_live(root) else None
    if devs is None:
        devs = _scan([root / "block", root / "class" / "block"])
    return sorted((d for d in devs if _BLOCK_NAME.match(d.name)), key=lambda d: _natural(d.name))


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------------
# Per kind
# ---------------------------------------------------------------------------


def _dax_devices(root: Path) -> Iterator[DaxDevice]:
    for d in _dax_sysdevs(root):
        p = d.syspath
        driver = d.driver
        if driver == "device_dax":
            mode = "devdax"
        elif driver == "kmem":
            mode = "system-ram"
        elif driver is None and (root / "class" / "dax" / d.name).exists() and not (root / "bus" / "dax").exists():
            mode = "devdax"  # before Linux 5.1 there was only the devdax personality
        else:
            mode = "unbound" if driver is None else driver
        align = _read_int(p / "align")
        if align is None:
            # Kernels before 5.10 expose the alignment on the region only.
            # p is usually a symlink (bus/dax/devices/daxX.Y): the region is beside the real directory.
            real = Path(os.path.realpath(p))
            align = _read_int(real / "dax_region" / "align") or _read_int(real.parent / "dax_region" / "align")
        yield DaxDevice(
            kind="devdax",
            path=d.devnode,
            size=_read_int(p / "size") or 0,
            name=d.name,
            mode=mode,
            driver=driver,
            align=align,
            numa_node=_node(_read_int(p / "numa_node")),
            target_node=_node(_read_int(p / "target_node")),
        )


def hugepages(sysfs_root: str | os.PathLike[str] | None = None) -> list[HugePages]:
    """Hugepage counts per page size, system-wide and per NUMA node.

    Parameters
    ----------
    sysfs_root : path-like, optional
        The sysfs root (see :func:`resolve_sysfs_root`).

    Returns
    -------
    list of HugePages
        One per page size the kernel supports, smallest first.
    """
    root = resolve_sysfs_root(sysfs_root)
    base = root / "kernel" / "mm" / "hugepages"
    sizes: dict[int, HugePages] = {}
    try:
        entries = os.listdir(base)
    except OSError:
        entries = []
    for entry in entries:
        m = _HP_DIR.match(entry)
        if not m:
            continue
        d = base / entry
        sizes[int(m.group(1)) * 1024] = HugePages(
            pagesize=int(m.group(1)) * 1024,
            total=_read_int(d / "nr_hugepages") or 0,
            free=_read_int(d / "free_hugepages") or 0,
            reserved=_read_int(d / "resv_hugepages") or 0,
            surplus=_read_int(d / "surplus_hugepages") or 0,
            overcommit=_read_int(d / "nr_overcommit_hugepages") or 0,
        )
    nodes_dir = root / "devices" / "system" / "node"
    try:
        node_names = os.listdir(nodes_dir)
    except OSError:
        node_names = []
    for nn in node_names:
        if not re.match(r"^node\d+$", nn):
            continue
        hp = nodes_dir / nn / "hugepages"
        try:
            entries = os.listdir(hp)
        except OSError:
            continue
        for entry in entries:
            m = _HP_DIR.match(entry)
            if not m:
                continue
            ps = int(m.group(1)) * 1024
            info = sizes.setdefault(ps, HugePages(pagesize=ps))
            info.nodes[int(nn[4:])] = HugePagesNode(
                total=_read_int(hp / entry / "nr_hugepages") or 0,
                free=_read_int(hp / entry / "free_hugepages") or 0,
                surplus=_read_int(hp / entry / "surplus_hugepages") or 0,
            )
    for info in sizes.values():
        info.nodes = dict(sorted(info.nodes.items()))
    return [sizes[k] for k in sorted(sizes)]


def _default_hugepagesize(root: Path, sizes: Sequence[HugePages]) -> int:
    """The kernel's default hugepage size (``Hugepagesize`` in /proc/meminfo)."""
    if _is_live(root):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Hugepagesize:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return 2 << 20 if any(s.pagesize == 2 << 20 for s in sizes) or not sizes else sizes[0].pagesize


def _octal(text: str | None) -> int | None:
    try:
        return int(text, 8) if text else None
    except ValueError:
        return None


def _decimal(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _hugetlbfs_mounts(root: Path, mounts: Sequence[_Mount]) -> Iterator[HugetlbfsMount]:
    sizes = hugepages(root)
    by_size = {s.pagesize: s for s in sizes}
    default = _default_hugepagesize(root, sizes)
    for m in mounts:
        if m.fstype != "hugetlbfs":
            continue
        # The kernel always prints pagesize= (e.g. "2M", "1024M"); older ones may not.
        pagesize = _size_option(m.options.get("pagesize")) or default
        info = by_size.get(pagesize, HugePages(pagesize=pagesize))
        limit = _size_option(m.options.get("size"))
        size = info.total * pagesize
        if limit is not None:
            size = min(size, limit)
        yield HugetlbfsMount(
            kind="hugetlbfs",
            path=m.mountpoint,
            size=size,
            pagesize=pagesize,
            total_pages=info.total,
            free_pages=info.free,
            reserved_pages=info.reserved,
            surplus_pages=info.surplus,
            size_limit=limit,
            uid=_decimal(m.options.get("uid")),
            gid=_decimal(m.options.get("gid")),
            mode=_octal(m.options.get("mode")),
            read_only="ro" in m.options,
        )


def _fsdax_mounts(mounts: Sequence[_Mount]) -> Iterator[FsdaxMount]:
    for m in mounts:
        dax = m.options.get("dax")
        if dax is None:
            continue
        if dax in ("", "always"):
            dax_mode = "always"  # plain "dax" is the old spelling of dax=always
        elif dax == "inode":
            dax_mode = "inode"
        else:
            continue  # dax=never
        size, free = _statvfs(m.mountpoint)
        yield FsdaxMount(
            kind="fsdax",
            path=m.mountpoint,
            size=size,
            source=m.source,
            fstype=m.fstype,
            dax_mode=dax_mode,
            free=free,
            read_only="ro" in m.options,
        )


def _null_blk_memory_backed(root: Path, index: int) -> bool:
    """Whether null_blk device ``nullb<index>`` keeps its data (``memory_backed=1``).

    Devices made through configfs carry their own setting; devices made at module
    load (``nr_devices=``) follow the module parameter.
    """
    cfg = root / "kernel" / "config" / "nullb"
    try:
        entries = sorted(os.listdir(cfg))
    except OSError:
        entries = []
    for entry in entries:
        d = cfg / entry
        if _read_int(d / "index") == index or entry == f"nullb{index}":
            return _read(d / "memory_backed") in ("1", "Y", "y")
    return _read(root / "module" / "null_blk" / "parameters" / "memory_backed") in ("1", "Y", "y")


def _swaps(root: Path) -> set[str]:
    if not _is_live(root):
        return set()
    try:
        with open("/proc/swaps", encoding="utf-8", errors="replace") as f:
            return {line.split()[0] for line in f.read().splitlines()[1:] if line.split()}
    except OSError:
        return set()


def _block_devices(root: Path, mounts: Sequence[_Mount]) -> Iterator[BlockDevice]:
    mounted = {m.majmin: m.mountpoint for m in mounts}
    swaps = _swaps(root)
    for d in _block_sysdevs(root):
        # The block/ entry may be a symlink into devices/; attributes are read through it.
        p = root / "block" / d.name
        if not p.exists():
            p = d.syspath
        m = _BLOCK_NAME.match(d.name)
        assert m is not None
        prefix, index = m.group(1), int(m.group(2))
        backing = None
        if prefix == "loop":
            backing = _read(p / "loop" / "backing_file")
            if not backing:
                continue  # an unbound loop device is not a device yet
            if backing.endswith(" (deleted)"):
                backing = backing[: -len(" (deleted)")]
            host = _mount_of(backing, mounts)
            memory_backed = host is not None and host.fstype in _MEMORY_FSTYPES
        elif prefix == "ram":
            memory_backed = True
        else:
            memory_backed = _null_blk_memory_backed(root, index)

        in_use = None
        try:
            holders = sorted(os.listdir(p / "holders"))
        except OSError:
            holders = []
        majmins = [(_read(p / "dev") or "", d.devnode)]
        try:
            for part in sorted(os.listdir(p)):
                if part.startswith(d.name) and (p / part / "dev").exists():
                    majmins.append((_read(p / part / "dev") or "", "/dev/" + part))
        except OSError:
            pass
        for mm, node in majmins:
            if mm and mm in mounted:
                in_use = f"{node} is mounted on {mounted[mm]}"
                break
            if node in swaps:
                in_use = f"{node} is in use as swap"
                break
        if in_use is None and holders:
            in_use = f"held by {', '.join(holders)}"

        yield BlockDevice(
            kind="blockdev",
            path=d.devnode,
            size=(_read_int(p / "size") or 0) * 512,  # sysfs counts 512-byte sectors
            name=d.name,
            driver=_BLOCK_DRIVER[prefix],
            memory_backed=memory_backed,
            backing_file=backing,
            read_only=_read(p / "ro") == "1",
            in_use=in_use,
        )


def _tmpfs(mounts: Sequence[_Mount]) -> Iterator[TmpfsMount]:
    shm = [m for m in mounts if m.mountpoint == "/dev/shm" and m.fstype == "tmpfs"]
    if shm:
        size, free = _statvfs("/dev/shm")
        if not size:
            size = _size_option(shm[-1].options.get("size")) or 0
        yield TmpfsMount(kind="tmpfs", path="/dev/shm", size=size, free=free)


def devices(
    sysfs_root: str | os.PathLike[str] | None = None,
    *,
    mountinfo: str | os.PathLike[str] | None = None,
) -> list[Device]:
    """List the fast memory this machine offers.

    Parameters
    ----------
    sysfs_root : path-like, optional
        Read sysfs here instead of ``$PYACCEL_SYSFS_ROOT`` or ``/sys``.
    mountinfo : path-like, optional
        Read the mount table here instead of ``$PYACCEL_MOUNTINFO`` or ``/proc/self/mountinfo``.

    Returns
    -------
    list of Device
        :class:`DaxDevice`, :class:`HugetlbfsMount`, :class:`FsdaxMount`,
        :class:`BlockDevice` and :class:`TmpfsMount` entries, in the order of
        :data:`KINDS` (the default-pool preference), by name within a kind.
        Loop devices without a backing file are left out; null_blk devices that
        discard their data, and loop devices on disk files, are listed with
        ``memory_backed=False``.  zram is not listed (it compresses, and is usually swap).
    """
    root = resolve_sysfs_root(sysfs_root)
    mounts = _mounts(mountinfo)
    out: list[Device] = []
    out.extend(_dax_devices(root))
    out.extend(_hugetlbfs_mounts(root, mounts))
    out.extend(_fsdax_mounts(mounts))
    out.extend(_block_devices(root, mounts))
    out.extend(_tmpfs(mounts))
    return out


# ---------------------------------------------------------------------------
# The default pool
# ---------------------------------------------------------------------------


def unusable_reason(dev: Device) -> str | None:
    """Why this process cannot put the default pool on ``dev``, or None when it can.

    Checks permissions (read and write for a device; write and search on a
    mount point, and read-write on an existing pool file there), read-only
    flags, and for each kind what makes it a bad default: device-DAX not in
    devdax mode, a hugetlbfs without free pages, an fsdax in ``dax=inode``
    mode, a block device that loses data or is used by something else.
    """
    rw = os.R_OK | os.W_OK
    if isinstance(dev, DaxDevice):
        if dev.mode != "devdax":
            return f"{dev.name} is in {dev.mode} mode, not devdax"
        if not os.path.exists(dev.path):
            return f"{dev.path} does not exist"
        if not os.access(dev.path, rw):
            return f"{dev.path}: no read-write permission for this user (is it in group pyaccel?)"
        return None
    if isinstance(dev, BlockDevice):
        if not dev.memory_backed:
            return f"{dev.path} ({dev.driver}) is not memory-backed"
        if dev.in_use:
            return f"{dev.path}: {dev.in_use}"
        if dev.read_only:
            return f"{dev.path} is read-only"
        if not os.path.exists(dev.path):
            return f"{dev.path} does not exist"
        if not os.access(dev.path, rw):
            return f"{dev.path}: no read-write permission for this user (is it in group pyaccel?)"
        return None
    # Mounts: the pool is a file inside.
    if getattr(dev, "read_only", False):
        return f"{dev.path} is mounted read-only"
    pool = os.path.join(dev.path, DEFAULT_POOL_FILE)
    exists = os.path.exists(pool)
    if isinstance(dev, HugetlbfsMount) and dev.available_pages == 0 and not exists:
        # An existing pool file already holds its pages, so no free pages is fine then.
        return f"{dev.path}: no free {dev.pagesize >> 20} MiB hugepages (reserve some with scripts/setup-hugepages)"
    if isinstance(dev, FsdaxMount) and dev.dax_mode != "always":
        return f"{dev.path} is mounted dax={dev.dax_mode}: new files are not DAX"
    if exists:
        if not os.access(pool, rw):
            return f"{pool}: no read-write permission for this user"
    elif not os.access(dev.path, os.W_OK | os.X_OK):
        return f"{dev.path}: this user may not create files there"
    return None


def _candidate_path(dev: Device) -> str:
    if isinstance(dev, (DaxDevice, BlockDevice)):
        return dev.path
    return os.path.join(dev.path, DEFAULT_POOL_FILE)


def _is_raw_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISBLK(mode) or stat.S_ISCHR(mode)


def default_pool(
    devs: Sequence[Device] | None = None,
    *,
    config: _config.Config | None = None,
    sysfs_root: str | os.PathLike[str] | None = None,
    mountinfo: str | os.PathLike[str] | None = None,
) -> PoolChoice:
    """Choose the default pool.

    Parameters
    ----------
    devs : sequence of Device, optional
        The candidates; :func:`devices` is called when not given.
    config : Config, optional
        The configuration; :func:`pyaccel.config.load` is called when not given.
    sysfs_root, mountinfo : path-like, optional
        Passed to :func:`devices`.

    Returns
    -------
    PoolChoice
        The pinned path when the config pins one; else the first usable device in
        the order of :data:`KINDS` (largest first within device-DAX, most free
        pages first within hugetlbfs, then by name); else :data:`FALLBACK_POOL`.

    Raises
    ------
    pyaccel.config.ConfigError
        If a configuration file is malformed.
    """
    cfg = _config.load() if config is None else config
    if cfg.path:
        return PoolChoice(
            path=cfg.path,
            kind=None,
            source=cfg.source("path"),
            needs_create=_is_raw_device(cfg.path),
            size=cfg.size,
            partitions=dict(cfg.partitions),
            reason=f"pinned by {cfg.source('path')}",
        )

    if devs is None:
        devs = devices(sysfs_root, mountinfo=mountinfo)

    def rank(d: Device) -> tuple[int, int, list[object]]:
        if isinstance(d, HugetlbfsMount):
            weight = d.available_pages * d.pagesize
        else:
            weight = d.size
        return (KINDS.index(d.kind) if d.kind in KINDS else len(KINDS), -weight, _natural(d.path))

    skipped: list[str] = []
    for dev in sorted(devs, key=rank):
        if dev.kind == "tmpfs":
            break  # the fallback below is the tmpfs choice
        why = unusable_reason(dev)
        if why is not None:
            skipped.append(f"{dev.kind} {dev.path}: {why}")
            continue
        raw = isinstance(dev, (DaxDevice, BlockDevice))
        return PoolChoice(
            path=_candidate_path(dev),
            kind=dev.kind,
            source="discovery",
            needs_create=raw,
            size=cfg.size,
            partitions=dict(cfg.partitions),
            device=dev,
            reason=f"the first usable {dev.kind} found"
            + ("; it is a raw device: run `pyaccel pool create` on it first" if raw else ""),
            skipped=skipped,
        )
    tmpfs = next((d for d in devs if d.kind == "tmpfs"), None)
    reason = "no device-DAX, hugetlbfs, fsdax or memory-backed block device is usable: tmpfs emulation"
    if os.path.exists(FALLBACK_POOL) and not os.access(FALLBACK_POOL, os.R_OK | os.W_OK):
        reason += f" (but {FALLBACK_POOL} exists and this user may not read and write it)"
    return PoolChoice(
        path=FALLBACK_POOL,
        kind="tmpfs",
        source="fallback",
        needs_create=False,
        size=cfg.size,
        partitions=dict(cfg.partitions),
        device=tmpfs,
        reason=reason,
        skipped=skipped,
    )


def default_pool_path(
    devs: Sequence[Device] | None = None,
    *,
    config: _config.Config | None = None,
    sysfs_root: str | os.PathLike[str] | None = None,
    mountinfo: str | os.PathLike[str] | None = None,
) -> str:
    """Return :attr:`PoolChoice.path` of :func:`default_pool` (same arguments).

    Check :attr:`PoolChoice.needs_create` (via :func:`default_pool`) before
    treating a device path as a ready pool.
    """
    return default_pool(devs, config=config, sysfs_root=sysfs_root, mountinfo=mountinfo).path
