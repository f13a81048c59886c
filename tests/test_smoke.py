"""``scripts/smoke-test`` end to end: passes on tmpfs, hugetlbfs and a loop device; refuses (exit 2)
a device or file that holds a pool or other data unless ``--force``; cleans up after itself.

Each hardware run has a tmpfs twin.  Runs are kept small (``--size 32M``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, loop_device, python_env

import pyaccel
from pyaccel.errors import PoolFormatError

MiB = 1 << 20
SCRIPT = str(ROOT / "scripts" / "smoke-test")
STEPS = ["classify", "safety", "patterns", "persistence", "bandwidth", "model", "cleanup"]


def smoke(*args: str, env: dict[str, str] | None = None, rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300,
                       env=env or python_env())
    if rc is not None:
        assert r.returncode == rc, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def smoke_json(*args: str, rc: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    doc = json.loads(smoke(*args, "--json", env=env, rc=rc).stdout)
    assert [s["name"] for s in doc["steps"]] == STEPS
    return doc


def step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["name"] == name)


def check_passed(doc: dict[str, Any], kind: str) -> None:
    """Every step passed, with the figures each step promises."""
    failed = [f"{s['name']}: {s['status']}: {s['detail']}" for s in doc["steps"] if s["status"] != "PASS"]
    assert doc["result"] == "PASS" and doc["exit_code"] == 0, failed
    assert all(s["status"] == "PASS" for s in doc["steps"])
    c = step(doc, "classify")["figures"]
    assert c["kind"] == kind and c["test_bytes"] >= 16 * MiB
    for key in ("size", "align", "numa_node", "granularity", "persistent"):
        assert key in c
    p = step(doc, "patterns")["figures"]
    assert p["bad_bytes"] == 0 and p["verify_pid"] != os.getpid()
    assert p["random_bytes"] + p["address_bytes"] == p["bytes"] == c["test_bytes"]
    b = step(doc, "bandwidth")["figures"]
    assert all(b[k] > 0 for k in ("write_GBps", "read_GBps", "copy_GBps", "write_persist_GBps"))
    m = step(doc, "model")["figures"]
    assert m["bit_identical"] is True and m["tensors"] == 8 and m["outputs"] == 2


def assert_not_a_pool(path: str) -> None:
    with pytest.raises(PoolFormatError):
        pyaccel.open_pool(path, readonly=True)


def first_mib_zero(path: str) -> bool:
    with open(path, "rb") as f:
        return not any(f.read(MiB))


# ---------------------------------------------------------------------------
# passes


def test_smoke_passes_on_tmpfs_file(shm_dir: Path) -> None:
    target = str(shm_dir / "smoke.file")
    r = smoke(target, "--size", "32M", "--seed", "7")
    lines = r.stdout.strip().splitlines()
    assert lines[0] == f"pyaccel smoke test of {target}"
    for i, name in enumerate(STEPS, 1):
        assert lines[i].startswith(f"[{i}/7] {name}") and " PASS " in lines[i], lines[i]
    assert "GB/s" in lines[5] and "bit-identical" in lines[6]
    assert lines[-1].startswith("RESULT: PASS (7/7 steps passed")
    assert not os.path.exists(target)  # it made the file, so it removed it


def test_smoke_default_target_is_a_scratch_file_beside_the_default_pool(shm_dir: Path) -> None:
    env = python_env()
    env["PYACCEL_POOL"] = str(shm_dir / "default.pool")
    doc = smoke_json("--size", "16M", env=env)
    check_passed(doc, "tmpfs")
    assert os.path.dirname(doc["target"]) == str(shm_dir) and doc["target"] != env["PYACCEL_POOL"]
    assert "beside the default pool" in doc["note"]
    assert os.listdir(shm_dir) == []  # the default pool was never made, the scratch file is gone


@pytest.mark.root
@pytest.mark.hugetlbfs
def test_smoke_passes_on_hugetlbfs(hugetlbfs_dir: Path) -> None:
    doc = smoke_json(str(hugetlbfs_dir), "--size", "32M")
    check_passed(doc, "hugetlbfs")
    assert step(doc, "classify")["figures"]["align"] == 2 * MiB
    assert os.path.dirname(doc["target"]) == str(hugetlbfs_dir)
    assert os.listdir(hugetlbfs_dir) == []


@pytest.mark.root
@pytest.mark.blockdev
def test_smoke_passes_on_a_loop_device(loopdev: str) -> None:
    doc = smoke_json(loopdev, "--size", "32M")
    check_passed(doc, "block")
    pread = step(doc, "persistence")["figures"]["pread"]
    assert pread["buffered"]["match"] is True and pread["direct"]["match"] is True
    assert step(doc, "cleanup")["figures"]["wiped_bytes"] == MiB
    assert step(doc, "model")["figures"]["pool_size"] == 96 * MiB  # a device is used whole
    assert first_mib_zero(loopdev)
    assert_not_a_pool(loopdev)


# ---------------------------------------------------------------------------
# refusals


@pytest.mark.root
@pytest.mark.blockdev
def test_smoke_refuses_a_loop_device_with_a_pool(loopdev: str, shm_dir: Path) -> None:
    with pyaccel.open_pool(loopdev, create=True) as pool:
        uuid = pool.status().uuid
    r = smoke(loopdev, "--size", "32M", rc=2)
    assert f"refusing to touch {loopdev}: it holds a pyaccel pool (0 models, 96.0 MiB); give --force" in r.stdout
    assert "RESULT: REFUSED" in r.stdout
    with pyaccel.open_pool(loopdev, readonly=True) as pool:  # untouched
        assert pool.status().uuid == uuid
    doc = smoke_json(loopdev, "--size", "32M", "--force")
    check_passed(doc, "block")
    assert "overwriting it (--force)" in step(doc, "safety")["detail"]
    assert_not_a_pool(loopdev)


def test_smoke_refuses_a_file_with_a_pool_or_data(shm_dir: Path) -> None:
    """The tmpfs twin of the loop-device refusal, plus plain data and --keep."""
    pool_file = str(shm_dir / "has.pool")
    with pyaccel.open_pool(pool_file, create=True, size=16 * MiB) as pool:
        uuid = pool.status().uuid
    doc = smoke_json(pool_file, "--size", "16M", rc=2)
    assert doc["result"] == "REFUSED"
    s = step(doc, "safety")
    assert s["status"] == "REFUSED" and s["figures"]["holds"] == "pool"
    assert s["detail"].startswith(f"refusing to touch {pool_file}: it holds a pyaccel pool")
    assert [x["status"] for x in doc["steps"]] == ["PASS", "REFUSED"] + ["SKIP"] * 4 + ["PASS"]
    with pyaccel.open_pool(pool_file, readonly=True) as pool:
        assert pool.status().uuid == uuid

    data_file = shm_dir / "data.bin"
    data_file.write_bytes(bytes(5000) + b"precious")
    r = smoke(str(data_file), "--size", "16M", rc=2)
    assert "it holds data (first non-zero byte at offset 5000" in r.stdout
    assert data_file.read_bytes() == bytes(5000) + b"precious"

    # --force: passes, the pre-existing file stays (first MiB zeroed: no longer a pool)
    doc = smoke_json(pool_file, "--size", "16M", "--force")
    check_passed(doc, "tmpfs")
    assert os.path.exists(pool_file) and first_mib_zero(pool_file)
    assert_not_a_pool(pool_file)
    # --force --keep: the test pool stays, with the test model in it
    doc = smoke_json(str(data_file), "--size", "16M", "--force", "--keep")
    check_passed(doc, "tmpfs")
    assert step(doc, "cleanup")["figures"]["kept"] is True
    with pyaccel.open_pool(str(data_file), readonly=True) as pool:
        assert [m.name for m in pool.models()] == ["pyaccel-smoke-test"]


@pytest.mark.root
@pytest.mark.blockdev
def test_smoke_never_touches_a_mounted_device(tmp_path: Path) -> None:
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    with loop_device(32 * MiB) as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        try:
            doc = smoke_json(dev, "--size", "16M", "--force", rc=2)
            s = step(doc, "safety")
            assert s["status"] == "REFUSED" and "even with --force" in s["detail"]
            assert (mnt / "lost+found").is_dir()
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.root
@pytest.mark.blockdev
def test_smoke_fails_cleanly_on_a_device_too_small() -> None:
    with loop_device(8 * MiB) as dev:
        r = smoke(dev, rc=1)
        assert "[1/7] classify     FAIL    /dev/" in r.stdout and "needs at least 16.0 MiB" in r.stdout
        assert "RESULT: FAIL" in r.stdout


def test_smoke_usage_errors() -> None:
    r = smoke("--size", "1M", rc=2)
    assert r.stderr.strip().splitlines() == [
        "smoke-test: error: argument --size: '1M' is too small: at least 16M (see smoke-test --help)"]


def test_smoke_ctrl_c_still_cleans_up(shm_dir: Path) -> None:
    target = shm_dir / "interrupted.file"
    with subprocess.Popen([sys.executable, SCRIPT, str(target), "--size", "256M"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=python_env()) as child:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            if line.startswith("[2/7] safety"):
                child.send_signal(signal.SIGINT)  # during the pattern step, or soon after
                break
        out = child.stdout.read()
        err = child.stderr.read()
        assert child.wait(timeout=120) == 130, (out, err)
    assert "[7/7] cleanup      PASS" in out  # the step interrupted (if any) says "FAIL    interrupted"
    assert "RESULT" not in out
    assert err.strip() == "smoke-test: interrupted"
    assert not target.exists()
