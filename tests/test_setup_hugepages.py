"""Tests for scripts/setup-hugepages: on a fake sysfs (anyone) and on this machine's kernel (root)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "setup-hugepages"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (writes /sys/kernel/mm/hugepages, mounts hugetlbfs)")
NR_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("setup_hugepages", str(SCRIPT))
    spec = importlib.util.spec_from_loader("setup_hugepages", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------
# Fake sysfs
# ---------------------------------------------------------------------------


def _w(p: Path, v: object) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{v}\n")


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "sys"
    for kb, total in ((2048, 8), (1048576, 0)):
        d = root / "kernel" / "mm" / "hugepages" / f"hugepages-{kb}kB"
        for f, v in (("nr_hugepages", total), ("free_hugepages", total), ("resv_hugepages", 0),
                     ("surplus_hugepages", 0), ("nr_overcommit_hugepages", 0)):
            _w(d / f, v)
        for node in (0, 1):
            nd = root / "devices" / "system" / "node" / f"node{node}" / "hugepages" / f"hugepages-{kb}kB"
            for f, v in (("nr_hugepages", total // 2), ("free_hugepages", total // 2), ("surplus_hugepages", 0)):
                _w(nd / f, v)
    mi = tmp_path / "mountinfo"
    mi.write_text("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                  "40 27 0:40 / /dev/hugepages-pyaccel rw,relatime - hugetlbfs nodev rw,gid=990,mode=1770,pagesize=2M\n")
    return {"PYACCEL_SYSFS_ROOT": str(root), "PYACCEL_MOUNTINFO": str(mi)}


def snapshot(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = Path(p).read_text()
    return out


def test_show_fake(fake: dict[str, str]) -> None:
    r = run("show", "--json", env=fake)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["default_pagesize"] == 2 << 20  # not the live /sys: /proc/meminfo is not consulted
    s2, s1g = st["sizes"]
    assert (s2["pagesize"], s2["total"], s2["free"], s2["reserved"]) == (2 << 20, 8, 8, 0)
    assert s2["nodes"] == {"0": {"total": 4, "free": 4, "surplus": 0}, "1": {"total": 4, "free": 4, "surplus": 0}}
    assert s1g["pagesize"] == 1 << 30
    assert st["mounts"] == [{"path": "/dev/hugepages-pyaccel", "pagesize": 2 << 20,
                             "options": {"rw": "", "relatime": "", "gid": "990", "mode": "1770", "pagesize": "2M"}}]
    text = run(env=fake)  # no action: show, as a table
    assert text.returncode == 0
    assert "/dev/hugepages-pyaccel  pagesize=2M  gid=990,mode=1770" in text.stdout
    assert "      2M     1        4        4         -        0" in text.stdout


def test_reserve_fake(fake: dict[str, str], tmp_path: Path) -> None:
    root = Path(fake["PYACCEL_SYSFS_ROOT"])
    r = run("reserve", "16", "--pagesize", "2M", env=fake)
    assert r.returncode == 0, r.stderr
    assert "2M pages: 8 -> 16 (asked 16)" in r.stdout
    assert (root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text().strip() == "16"
    r = run("reserve", "3", "--pagesize", "1G", "--node", "1", env=fake)
    assert r.returncode == 0, r.stderr
    assert (root / "devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages").read_text().strip() == "3"
    # --min never lowers.
    r = run("reserve", "4", "--min", env=fake)
    assert r.returncode == 0 and "16 reserved, at least 4 asked: unchanged" in r.stdout
    # --persist: a sysctl.d file for the default size.
    conf = tmp_path / "etc" / "sysctl.d" / "80-pyaccel.conf"
    r = run("reserve", "16", "--persist", str(conf), env=fake)
    assert r.returncode == 0, r.stderr
    assert conf.read_text().splitlines()[-1] == "vm.nr_hugepages = 16"
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    r = run("reserve", "16", "--persist", str(conf), "--no-live", env=fake)
    assert "unchanged" in r.stdout
    # ...and a kernel command-line hint for 1G, with no file written.
    other = tmp_path / "other.conf"
    r = run("reserve", "2", "--pagesize", "1G", "--persist", str(other), "--no-live", env=fake)
    assert r.returncode == 0 and "hugepagesz=1G hugepages=2" in r.stdout and not other.exists()


def test_clear_fake(fake: dict[str, str]) -> None:
    root = Path(fake["PYACCEL_SYSFS_ROOT"])
    _w(root / "kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", 2)
    r = run("clear", env=fake)
    assert r.returncode == 0, r.stderr
    for kb in (2048, 1048576):
        assert (root / f"kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages").read_text().strip() == "0"


def test_dry_run_changes_nothing_fake(fake: dict[str, str], tmp_path: Path) -> None:
    before = snapshot(fake["PYACCEL_SYSFS_ROOT"])
    conf = tmp_path / "80-pyaccel.conf"
    for args in (("reserve", "64", "--persist", str(conf)), ("reserve", "2", "--pagesize", "1G", "--node", "0"),
                 ("clear",), ("--mount", str(tmp_path / "mnt"), "--group", "root"),
                 ("--unmount", "/dev/hugepages-pyaccel")):
        r = run(*args, "--dry-run", env=fake)
        assert r.returncode == 0, (args, r.stderr)
        assert "would" in r.stdout, (args, r.stdout)
    assert snapshot(fake["PYACCEL_SYSFS_ROOT"]) == before
    assert not conf.exists() and not (tmp_path / "mnt").exists()
    r = run("reserve", "64", "--dry-run", env=fake)
    assert "would write 64 to " in r.stdout and "(2M pages: now 8)" in r.stdout


@pytest.mark.parametrize(
    "args, rc, message",
    [
        (("reserve",), 2, "reserve needs a page count"),
        (("reserve", "-1"), 2, "reserve needs a page count"),
        (("show", "3"), 2, "takes no count"),
        (("reserve", "1", "--pagesize", "2X"), 2, "is not a page size"),
        (("reserve", "1", "--pagesize", "64K"), 1, "this kernel has no 64K hugepages (sizes: 2M, 1G)"),
        (("reserve", "1", "--node", "7"), 1, "NUMA node 7 does not exist (nodes: 0, 1)"),
        (("--mount", "/x", "--mode", "0666"), 2, "must not be open to others"),
        (("--mount", "/x", "--mode", "rw"), 2, "is not an octal mode"),
        (("--mount", "/x", "--group", "no-such-group-here"), 1, "group 'no-such-group-here' does not exist"),
        (("--mount", "/dev/hugepages-pyaccel", "--pagesize", "1G"), 1, "already a hugetlbfs mount with pagesize 2M"),
        (("reserve", "1", "--no-live"), 2, "--no-live only makes sense with --persist"),
    ],
)
def test_errors(fake: dict[str, str], args: tuple[str, ...], rc: int, message: str) -> None:
    r = run(*args, env=fake)
    assert r.returncode == rc, (r.stdout, r.stderr)
    assert message in r.stderr


def test_shortfall_is_loud_and_rolled_back(fake: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A kernel that gives fewer pages than asked: exit 1, asked vs got, the old count put back."""
    for k, v in fake.items():
        monkeypatch.setenv(k, v)
    mod = load_script()
    nr = Path(fake["PYACCEL_SYSFS_ROOT"]) / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    real_read = mod.read_int
    calls = {"n": 0}

    def stingy_read(path: Path) -> int:
        value = real_read(path)
        if path == nr and value == 100:
            calls["n"] += 1
            return 37  # what a fragmented kernel would give
        return value

    monkeypatch.setattr(mod, "read_int", stingy_read)
    assert mod.main(["reserve", "100"]) == 1
    err = capsys.readouterr().err
    assert "shortfall: asked for 100 2M pages, the kernel gave 37 (63 short); put back to 8" in err
    assert calls["n"] == 1 and nr.read_text().strip() == "8"


def test_page_size_parsing() -> None:
    mod = load_script()
    assert [mod.parse_size(s) for s in ("2M", "1G", "2048kB", "2048k", "2097152")] == [2 << 20, 1 << 30, 2 << 20, 2 << 20, 2 << 20]
    assert [mod.fmt_size(n) for n in (2 << 20, 1 << 30, 64 << 10, 1000)] == ["2M", "1G", "64K", "1000"]


# ---------------------------------------------------------------------------
# This machine's kernel (root)
# ---------------------------------------------------------------------------


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read())


@contextlib.contextmanager
def restore_hugepages() -> Iterator[int]:
    """Yield the current 2 MiB reservation, and put it back afterwards whatever happened."""
    if not os.path.exists(NR_2M):
        pytest.skip("this kernel has no 2 MiB hugepages")
    orig = _read(NR_2M)
    node_files = sorted(Path("/sys/devices/system/node").glob("node*/hugepages/hugepages-2048kB/nr_hugepages"))
    node_orig = {p: _read(str(p)) for p in node_files}
    try:
        yield orig
    finally:
        # Per node first, so that the pages go back where they were; then the total.
        for p, v in node_orig.items():
            p.write_text(str(v))
        with open(NR_2M, "w") as f:
            f.write(str(orig))
        assert _read(NR_2M) == orig, "could not restore nr_hugepages"
        assert {p: _read(str(p)) for p in node_files} == node_orig, "could not restore per-node hugepages"


@needs_root
@pytest.mark.root
@pytest.mark.hugetlbfs
def test_reserve_real_and_read_back() -> None:
    with restore_hugepages() as orig:
        r = run("reserve", str(orig + 3), "--pagesize", "2M")
        if r.returncode == 1 and "shortfall" in r.stderr:
            pytest.skip(f"the kernel could not give 3 more 2 MiB pages: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        assert f"2M pages: {orig} -> {orig + 3} (asked {orig + 3})" in r.stdout
        assert _read(NR_2M) == orig + 3
        st = json.loads(run("show", "--json").stdout)
        (s2,) = [s for s in st["sizes"] if s["pagesize"] == 2 << 20]
        assert s2["total"] == orig + 3 and s2["free"] >= 3
        assert sum(n["total"] for n in s2["nodes"].values()) == orig + 3
        # Per node, on node 0.
        node0 = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
        n0 = _read(node0)
        r = run("reserve", str(n0 + 1), "--node", "0", "--pagesize", "2M")
        assert r.returncode == 0, r.stderr
        assert _read(node0) == n0 + 1
        # Asking for more than the machine has is refused before anything is written.
        r = run("reserve", str(1 << 40))
        assert r.returncode == 1 and "memory is available" in r.stderr
        assert _read(node0) == n0 + 1


@needs_root
@pytest.mark.root
def test_dry_run_real_changes_nothing() -> None:
    with restore_hugepages() as orig:
        before = run("show", "--json").stdout
        for args in (("reserve", str(orig + 5)), ("clear",), ("reserve", "1", "--pagesize", "1G")):
            r = run(*args, "--dry-run")
            assert r.returncode == 0, r.stderr
            assert "would write" in r.stdout
        assert run("show", "--json").stdout == before
        assert _read(NR_2M) == orig


@needs_root
@pytest.mark.root
@pytest.mark.hugetlbfs
def test_mount_unmount_real() -> None:
    parent = tempfile.mkdtemp(prefix="pyaccel-hp-")
    mnt = os.path.join(parent, "mnt")
    try:
        r = run("--mount", mnt, "--pagesize", "2M", "--group", "root", "--mode", "0770")
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        mi = Path("/proc/self/mountinfo").read_text()
        (line,) = [ln for ln in mi.splitlines() if f" {mnt} " in ln]
        assert "hugetlbfs" in line and "pagesize=2M" in line and "mode=770" in line
        assert (os.stat(mnt).st_mode & 0o7777) == 0o770
        again = run("--mount", mnt, "--pagesize", "2M", "--group", "root")
        assert again.returncode == 0 and "already mounted" in again.stdout  # idempotent
        assert run("--unmount", mnt).returncode == 0
        assert not os.path.ismount(mnt)
        gone = run("--unmount", mnt)
        assert gone.returncode == 0 and "nothing to unmount" in gone.stdout
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", mnt], check=False)
        if os.path.isdir(mnt):
            os.rmdir(mnt)
        os.rmdir(parent)


def test_not_root_fails_clearly(fake: dict[str, str]) -> None:
    """Writing without permission is one clear line, not a traceback."""
    if not IS_ROOT or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root to drop to user nobody, and /usr/bin/python3")
    r = subprocess.run(["/usr/bin/python3", "-c", SCRIPT.read_text(), "reserve", "1"], capture_output=True,
                       text=True, user=65534, group=65534, extra_groups=[], cwd="/",
                       env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 1
    assert "permission denied (run as root)" in r.stderr and "Traceback" not in r.stderr
