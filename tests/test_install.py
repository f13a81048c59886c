"""Tests for `make install` / `make uninstall` (mk/install.mk), the pkg-config template and the udev rules.

The fragment is exercised against a scratch tree in tmp: a Makefile with a fake
``lib`` target and fake library files, copies of the fragment and of the files it
installs, and a tiny Python project standing in for the package (so no compiler
or Cython build is needed).  One slow test runs the real top-level Makefile when
the library and setup files are there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "udev" / "90-pyaccel.rules"
IS_ROOT = os.geteuid() == 0
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


# ---------------------------------------------------------------------------
# udev rules
# ---------------------------------------------------------------------------

# Keys udev knows (udev(7)); those that take {attribute}.
_MATCH_KEYS = {"ACTION", "DEVPATH", "KERNEL", "NAME", "SYMLINK", "SUBSYSTEM", "DRIVER", "KERNELS",
               "SUBSYSTEMS", "DRIVERS", "TAG", "TAGS", "TEST", "PROGRAM", "RESULT", "ENV", "ATTR",
               "SYSCTL", "ATTRS", "CONST"}
_ASSIGN_KEYS = {"NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV",
                "TAG", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS"}
_ATTR_KEYS = {"ENV", "ATTR", "ATTRS", "SYSCTL", "TEST", "CONST", "SECLABEL", "RUN", "IMPORT"}
_TOKEN = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """Parse udev rules into [(key, attr, op, value), ...] per rule; raise ValueError when malformed."""
    rules = []
    lines = text.replace("\\\n", "").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pos, tokens = 0, []
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                raise ValueError(f"line {n}: cannot parse at {line[pos:]!r}")
            key, attr, op, value, _ = m.groups()
            if attr is not None and key not in _ATTR_KEYS:
                raise ValueError(f"line {n}: {key} takes no {{attribute}}")
            if key in _ATTR_KEYS - {"TEST", "RUN", "IMPORT", "SECLABEL"} and attr is None:
                raise ValueError(f"line {n}: {key} needs an {{attribute}}")
            if op in ("==", "!=") and key not in _MATCH_KEYS:
                raise ValueError(f"line {n}: {key} cannot be matched")
            if op not in ("==", "!=") and key not in _ASSIGN_KEYS:
                raise ValueError(f"line {n}: {key} cannot be assigned ({op})")
            tokens.append((key, attr, op, value))
            pos = m.end()
        rules.append(tokens)
    return rules


def test_rules_parse_and_are_safe() -> None:
    text = RULES.read_text()
    rules = parse_rules(text)
    assert "0666" not in text
    labels = {v for r in rules for k, _, _, v in r if k == "LABEL"}
    gotos = {v for r in rules for k, _, _, v in r if k == "GOTO"}
    assert gotos <= labels, f"GOTO without LABEL: {gotos - labels}"
    granting = [r for r in rules if any(k in ("GROUP", "MODE", "OWNER") for k, *_ in r)]
    assert len(granting) == 2
    seen = set()
    for r in granting:
        d = {(k, a): (op, v) for k, a, op, v in r}
        assert d[("GROUP", None)] == ("=", "pyaccel")
        op, mode = d[("MODE", None)]
        assert op == "=" and re.fullmatch(r"0?[0-7]{3}", mode) and int(mode, 8) & 0o007 == 0, mode
        assert mode == "0660"
        assert ("TAG", None) in d and d[("TAG", None)] == ("+=", "systemd")
        assert ("OWNER", None) not in d  # never a user: access goes through the group
        seen.add(d[("SUBSYSTEM", None)])
        if d[("SUBSYSTEM", None)] == ("==", "dax"):
            assert d[("KERNEL", None)] == ("==", "dax[0-9]*.[0-9]*")
        else:
            assert d[("KERNEL", None)] == ("==", "nullb[0-9]*")
    assert seen == {("==", "dax"), ("==", "block")}


@pytest.mark.parametrize(
    "bad",
    [
        'KERNEL=="dax*", MODE="0660"  GROUP="x"',  # missing comma
        'KERNEL="dax*", MODE="0660"',  # KERNEL cannot be assigned
        'GROUP=="pyaccel"',  # GROUP cannot be matched
        'SUBSYSTEM=="dax", MODE=0660',  # unquoted value
        'ATTR=="x"',  # ATTR needs {attribute}
        'KERNEL{x}=="dax"',  # KERNEL takes no attribute
        'SUBSYSTEM=="dax" GROUP="pyaccel"',
    ],
)
def test_rule_checker_catches_mistakes(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rules(bad)


# ---------------------------------------------------------------------------
# A scratch tree for the fragment
# ---------------------------------------------------------------------------

SCRATCH_MAKEFILE = """\
PYTHON ?= {python}
VERSION := 0.1.0
SOMAJOR := 0
BUILD := driver/build
.PHONY: lib
lib:
\t@mkdir -p $(BUILD)
\t@echo fake-shared-object > $(BUILD)/libpyaccel.so.$(VERSION)
\t@echo fake-archive > $(BUILD)/libpyaccel.a
-include mk/install.mk
"""

FAKE_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"

[project.scripts]
{dist} = "{pkg}:main"

[tool.setuptools]
packages = ["{pkg}", "{pkg}.sub"]
"""


def make_scratch(tmp: Path, dist: str = "pyaccel-installtest") -> dict[str, str]:
    """Build the scratch tree; return the make variables that point at its fake package."""
    for rel in ("mk/install.mk", "driver/pyaccel.pc.in", "udev/90-pyaccel.rules", "scripts/setup-hugepages"):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp / rel)
    (tmp / "driver" / "include").mkdir(parents=True)
    (tmp / "driver" / "include" / "pyaccel.h").write_text("/* fake pyaccel.h */\n")
    (tmp / "Makefile").write_text(SCRATCH_MAKEFILE.format(python=sys.executable))
    pkg = dist.replace("-", "_")
    proj = tmp / "proj"
    (proj / pkg / "sub").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(FAKE_PYPROJECT.format(dist=dist, pkg=pkg))
    (proj / pkg / "__init__.py").write_text("def main():\n    print('hello')\n")
    (proj / pkg / "sub" / "__init__.py").write_text("")
    return {"PYSRC": str(proj), "PA_DIST": dist, "PIP_FLAGS": "--no-build-isolation --no-index"}


def make(tmp: Path, target: str, **variables: str) -> subprocess.CompletedProcess[str]:
    args = ["make", "--no-print-directory", "-C", str(tmp), target] + [f"{k}={v}" for k, v in variables.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@needs_make
def test_destdir_install_and_uninstall(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dest = tmp_path / "dest"
    v = make_scratch(src)
    v.update(DESTDIR=str(dest), PREFIX="/opt/pyaccel", HUGEPAGES="16", HUGEPAGESZ="2M")
    r = make(src, "install", **v)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    lib = dest / "opt/pyaccel/lib"
    # Library, symlinks, archive, header.
    assert (lib / "libpyaccel.so.0.1.0").read_text() == "fake-shared-object\n"
    assert os.readlink(lib / "libpyaccel.so.0") == "libpyaccel.so.0.1.0"
    assert os.readlink(lib / "libpyaccel.so") == "libpyaccel.so.0"
    assert (lib / "libpyaccel.so.0.1.0").stat().st_mode & 0o777 == 0o755
    assert (lib / "libpyaccel.a").read_text() == "fake-archive\n"
    assert (dest / "opt/pyaccel/include/pyaccel.h").exists()
    # pkg-config with the right prefix, usable by pkg-config itself.
    pc = (lib / "pkgconfig" / "pyaccel.pc").read_text()
    assert "prefix=/opt/pyaccel\n" in pc and "libdir=${exec_prefix}/lib\n" in pc and "Version: 0.1.0\n" in pc
    assert "@" not in pc
    if shutil.which("pkg-config"):
        q = subprocess.run(["pkg-config", "--cflags", "--libs", "pyaccel"], capture_output=True, text=True,
                           env={**os.environ, "PKG_CONFIG_PATH": str(lib / "pkgconfig"), "PKG_CONFIG_LIBDIR": ""})
        assert q.returncode == 0, q.stderr
        assert q.stdout.split() == ["-I/opt/pyaccel/include", "-L/opt/pyaccel/lib", "-lpyaccel"]
    # udev rules, at the default UDEVDIR under DESTDIR, with 0660.
    rules = (dest / "etc/udev/rules.d/90-pyaccel.rules").read_text()
    assert rules == RULES.read_text() and 'MODE="0660"' in rules and "0666" not in rules
    # The boot-time hugepage file (2M is this kernel's default size on x86).
    sysctl = dest / "etc/sysctl.d/80-pyaccel.conf"
    if "default page size 2M" in subprocess.run([sys.executable, str(REPO / "scripts/setup-hugepages")],
                                                 capture_output=True, text=True).stdout:
        assert sysctl.read_text().splitlines()[-1] == "vm.nr_hugepages = 16"
    # What DESTDIR must not touch, said plainly.
    for line in ("skipped    group pyaccel: DESTDIR is set", "skipped    udev reload: DESTDIR is set",
                 "skipped    live hugepage reservation and mount: DESTDIR is set", "skipped    ldconfig: DESTDIR is set"):
        assert line in out
    # The Python package under DESTDIR, never in the live environment.
    inits = list(dest.rglob("pyaccel_installtest/__init__.py"))
    assert len(inits) == 1 and ("site-packages" in str(inits[0]) or "dist-packages" in str(inits[0]))
    assert list(dest.rglob("pyaccel_installtest-0.1.0.dist-info/RECORD"))
    live = subprocess.run([sys.executable, "-m", "pip", "show", "pyaccel-installtest"], capture_output=True)
    assert live.returncode != 0, "DESTDIR install leaked into the live environment"
    # The manifest lists every file installed, by its final path.
    manifest = dest / "opt/pyaccel/share/pyaccel/install-manifest.txt"
    entries = manifest.read_text().splitlines()
    assert len(entries) == len(set(entries))
    recorded = {e.split(" ", 1)[1] for e in entries if e.split(" ", 1)[0] in ("file", "link", "dir")}
    installed = {"/" + p for p in tree(dest)} - {"/opt/pyaccel/share/pyaccel/install-manifest.txt"}
    assert installed == recorded
    assert "file /opt/pyaccel/lib/libpyaccel.so.0.1.0" in entries and "link /opt/pyaccel/lib/libpyaccel.so" in entries

    # Idempotent: a second install changes nothing and says so.
    before = {p: (dest / p).read_bytes() for p in tree(dest) if (dest / p).is_file() and "dist-info" not in p}
    r2 = make(src, "install", **v)
    assert r2.returncode == 0, r2.stderr
    assert "unchanged  /opt/pyaccel/lib/libpyaccel.so.0.1.0" in r2.stdout
    assert "unchanged  /opt/pyaccel/lib/libpyaccel.so -> libpyaccel.so.0" in r2.stdout
    assert "installed  /opt" not in r2.stdout and "mkdir" not in r2.stdout
    after = {p: (dest / p).read_bytes() for p in tree(dest) if (dest / p).is_file() and "dist-info" not in p}
    assert after.keys() == before.keys()
    assert {p for p in after if after[p] != before[p] and not p.endswith(".pyc")} == set()
    assert sorted(manifest.read_text().splitlines()) == sorted(entries)

    # Something of someone else's in a shared directory survives uninstall.
    (dest / "opt/pyaccel/lib/other.so").write_text("not ours")
    r3 = make(src, "uninstall", **v)
    assert r3.returncode == 0, r3.stdout + r3.stderr
    assert "kept       /opt/pyaccel/lib/ (not empty)" in r3.stdout
    assert tree(dest) == {"opt", "opt/pyaccel", "opt/pyaccel/lib", "opt/pyaccel/lib/other.so"}
    (dest / "opt/pyaccel/lib/other.so").unlink()
    # A second uninstall has nothing to do.
    r4 = make(src, "uninstall", **v)
    assert r4.returncode == 0 and "nothing to uninstall" in r4.stdout


@needs_make
def test_custom_dirs_and_group(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dest = tmp_path / "dest"
    v = make_scratch(src)
    v.update(DESTDIR=str(dest), PREFIX="/usr", LIBDIR="/usr/lib64", UDEVDIR="/usr/lib/udev/rules.d",
             PYACCEL_GROUP="accel")
    r = make(src, "install", **v)
    assert r.returncode == 0, r.stderr
    pc = (dest / "usr/lib64/pkgconfig/pyaccel.pc").read_text()
    assert "prefix=/usr\n" in pc and "libdir=${exec_prefix}/lib64\n" in pc and "includedir=${prefix}/include\n" in pc
    rules = (dest / "usr/lib/udev/rules.d/90-pyaccel.rules").read_text()
    assert 'GROUP="accel"' in rules and 'GROUP="pyaccel"' not in rules
    assert "skipped    hugepages: HUGEPAGES not set" in r.stdout
    assert not (dest / "etc/sysctl.d").exists()
    assert make(src, "uninstall", **v).returncode == 0
    assert tree(dest) == set()


@needs_make
@pytest.mark.parametrize("variables, message", [
    ({"HUGEPAGES": "4", "HUGEPAGESZ": "4M"}, "HUGEPAGESZ=4M: use 2M or 1G"),
    ({"HUGEPAGES": "many"}, "HUGEPAGES=many: give a number of pages"),
])
def test_bad_hugepage_arguments(tmp_path: Path, variables: dict[str, str], message: str) -> None:
    v = make_scratch(tmp_path / "src")
    r = make(tmp_path / "src", "install", DESTDIR=str(tmp_path / "dest"), **v, **variables)
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "dest").exists()  # refused before doing anything


@needs_make
def test_missing_library_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    v = make_scratch(src)
    mk = src / "Makefile"
    mk.write_text(mk.read_text().replace("\t@echo fake-archive > $(BUILD)/libpyaccel.a\n", ""))
    r = make(src, "install", DESTDIR=str(tmp_path / "dest"), **v)
    assert r.returncode != 0 and "libpyaccel.a is missing" in r.stderr
    # What was done so far is in the manifest, so uninstall still cleans up.
    assert make(src, "uninstall", DESTDIR=str(tmp_path / "dest"), **v).returncode == 0
    assert tree(tmp_path / "dest") == set()


@needs_make
@pytest.mark.skipif(not IS_ROOT, reason="needs root (creates a group, reserves hugepages, mounts hugetlbfs)")
@pytest.mark.root
@pytest.mark.hugetlbfs
def test_live_install_and_uninstall(tmp_path: Path) -> None:
    """Without DESTDIR, for real: group, hugepages, mount, pip, ldconfig; then all reversed.

    PREFIX, UDEVDIR, SYSCTLDIR and the mount point are in tmp, the group and the
    package have test names, so nothing of the machine's own pyaccel is touched.
    """
    nr = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    if not nr.exists():
        pytest.skip("no 2 MiB hugepages")
    src = tmp_path / "src"
    root = Path(tempfile.mkdtemp(prefix="pyaccel-live-"))
    group = f"pyaccel-t{os.getpid()}"
    v = make_scratch(src)
    orig = int(nr.read_text())
    mnt = root / "mnt" / "huge"
    v.update(PREFIX=str(root / "usr"), UDEVDIR=str(root / "udev"), SYSCTLDIR=str(root / "sysctl.d"),
             HUGEPAGES=str(orig + 2), HUGEPAGESZ="2M", HUGEPAGES_MOUNT=str(mnt), PYACCEL_GROUP=group)
    try:
        r = make(src, "install", **v)
        if r.returncode != 0 and "shortfall" in r.stderr:
            pytest.skip(f"the kernel could not give 2 more hugepages: {r.stderr.strip()}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"created    group {group}" in r.stdout
        gid = subprocess.run(["getent", "group", group], capture_output=True, text=True, check=True).stdout.split(":")[2]
        assert int(nr.read_text()) == orig + 2
        assert os.path.ismount(mnt)
        (line,) = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if f" {mnt} " in ln]
        assert f"gid={gid}" in line and "mode=1770" in line and "pagesize=2M" in line
        assert "udevadm not found" in r.stdout or "reloaded" in r.stdout or "FAILED   udev" in r.stdout
        assert "ran        ldconfig" in r.stdout or "ldconfig: not found" in r.stdout
        shown = subprocess.run([sys.executable, "-m", "pip", "show", "pyaccel-installtest"], capture_output=True)
        assert shown.returncode == 0
        manifest = (root / "usr/share/pyaccel/install-manifest.txt").read_text().splitlines()
        assert f"hugepages 2M {orig}" in manifest and f"group {group}" in manifest
        assert f"mount {mnt}" in manifest and "pip pyaccel-installtest" in manifest
        # Idempotent for real too.
        r2 = make(src, "install", **v)
        assert r2.returncode == 0, r2.stderr
        assert f"exists     group {group}" in r2.stdout and "already mounted" in r2.stdout
        assert int(nr.read_text()) == orig + 2

        r3 = make(src, "uninstall", **v)
        assert r3.returncode == 0, r3.stdout + r3.stderr
        assert int(nr.read_text()) == orig
        assert not os.path.ismount(mnt)
        assert subprocess.run(["getent", "group", group], capture_output=True).returncode != 0
        shown = subprocess.run([sys.executable, "-m", "pip", "show", "pyaccel-installtest"], capture_output=True)
        assert shown.returncode != 0
        assert tree(root) == set()  # root itself existed before install, so it stays
    finally:
        # Put the machine back whatever failed above.
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
        nr.write_text(str(orig))
        if subprocess.run(["getent", "group", group], capture_output=True).returncode == 0:
            subprocess.run(["groupdel", group], check=False)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "pyaccel-installtest"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@needs_make
@pytest.mark.slow
def test_real_makefile_destdir(tmp_path: Path) -> None:
    """The top-level Makefile's `make install DESTDIR=...` with the real library and package."""
    if not (REPO / "Makefile").exists() or "mk/install.mk" not in (REPO / "Makefile").read_text():
        pytest.skip("the top-level Makefile does not include mk/install.mk yet")
    if not any((REPO / f).exists() for f in ("setup.py", "pyproject.toml")):
        pytest.skip("no setup.py/pyproject.toml yet: the Python package cannot be installed")
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "install", f"DESTDIR={dest}",
                        f"PYTHON={sys.executable}", "PIP_FLAGS=--no-build-isolation"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lib = dest / "usr/local/lib"
    so = lib / "libpyaccel.so.0.1.0"
    assert so.is_file() and os.readlink(lib / "libpyaccel.so.0") == "libpyaccel.so.0.1.0"
    if shutil.which("readelf"):
        dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        assert "Library soname: [libpyaccel.so.0]" in dyn
    assert (dest / "usr/local/include/pyaccel.h").read_bytes() == (REPO / "driver/include/pyaccel.h").read_bytes()
    assert list(dest.rglob("pyaccel/discover.py"))
    r = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "uninstall", f"DESTDIR={dest}",
                        f"PYTHON={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(dest) == set()
