"""Shared fixtures: scratch space on tmpfs, real hugetlbfs mounts and loop devices.

Backends needing root (hugetlbfs, loop devices) are set up for real and put
back afterwards; without root, or where the kernel refuses, they skip and say
why.  The ``pool_path`` fixture is parametrized over every backend this machine
can offer, so a test using it runs the same scenario on each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUGE_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long multi-process soaks in full")


def is_root() -> bool:
    return os.geteuid() == 0


def need_root(what: str) -> None:
    if not is_root():
        pytest.skip(f"{what} needs root (run the tests as root, as CI does)")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A scratch directory on tmpfs (/dev/shm), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="pyaccel-test-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def hugepages_reserved(pages: int) -> Iterator[int]:
    """Raise the 2 MiB hugepage pool by ``pages`` free pages, then restore it."""
    need_root("reserving hugepages")
    if not os.path.exists(HUGE_2M):
        pytest.skip("this kernel has no 2 MiB hugepages")
    before = _read_int(HUGE_2M)
    free_path = HUGE_2M.replace("nr_hugepages", "free_hugepages")
    want = before + pages
    try:
        _write(HUGE_2M, want)
        got = _read_int(HUGE_2M)
        if _read_int(free_path) < pages:
            pytest.skip(f"asked the kernel for {pages} free 2 MiB hugepages, got {got - before}")
        yield pages
    finally:
        _write(HUGE_2M, before)


@contextlib.contextmanager
def hugetlbfs_mount(pages: int = 64) -> Iterator[Path]:
    """A private hugetlbfs mount with ``pages`` 2 MiB pages reserved for it."""
    with hugepages_reserved(pages):
        d = Path(tempfile.mkdtemp(prefix="pyaccel-huge-"))
        r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            d.rmdir()
            pytest.skip(f"cannot mount hugetlbfs: {r.stderr.strip()}")
        try:
            yield d
        finally:
            subprocess.run(["umount", str(d)], check=False)
            d.rmdir()


@contextlib.contextmanager
def loop_device(size: int = 96 << 20) -> Iterator[str]:
    """A loop block device over a tmpfs file (the memory-backed block emulation)."""
    need_root("a loop device")
    if not shutil.which("losetup"):
        pytest.skip("losetup is not installed")
    fd, backing = tempfile.mkstemp(prefix="pyaccel-loop-", dir="/dev/shm")
    os.ftruncate(fd, size)
    os.close(fd)
    r = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
    if r.returncode:
        os.unlink(backing)
        pytest.skip(f"losetup failed: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        os.unlink(backing)


@pytest.fixture
def hugetlbfs_dir() -> Iterator[Path]:
    """A real hugetlbfs mount (root), 64 pages of 2 MiB reserved."""
    with hugetlbfs_mount(64) as d:
        yield d


@pytest.fixture
def loopdev() -> Iterator[str]:
    """A real loop block device over a 96 MiB tmpfs file (root)."""
    with loop_device() as dev:
        yield dev


BACKENDS = ["tmpfs", pytest.param("hugetlbfs", marks=[pytest.mark.root, pytest.mark.hugetlbfs]),
            pytest.param("loop", marks=[pytest.mark.root, pytest.mark.blockdev])]


@pytest.fixture(params=BACKENDS)
def pool_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where to make a pool of up to 64 MiB, on each backend in turn."""
    kind = request.param
    if kind == "tmpfs":
        d = Path(tempfile.mkdtemp(prefix="pyaccel-test-", dir="/dev/shm"))
        try:
            yield str(d / "test.pool")
        finally:
            shutil.rmtree(d, ignore_errors=True)
    elif kind == "hugetlbfs":
        with hugetlbfs_mount(48) as d:
            yield str(d / "test.pool")
    else:
        with loop_device(64 << 20) as dev:
            yield dev


def python_env() -> dict[str, str]:
    """The environment for child interpreters: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_python(code: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this checkout importable."""
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=timeout, env=env or python_env())
    if check and r.returncode:
        raise AssertionError(f"child failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def pyrun() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_python
