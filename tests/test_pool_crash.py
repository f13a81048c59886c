"""Crash consistency and concurrency of the pool.

A writer process is killed -- by SIGKILL at a random moment, or on the spot at
the Nth write or flush through the C core's fault injection -- in the middle
of loads, reloads and evicts chosen by a seeded RNG.  After each kill the pool
must open, fsck must leave no leak and no overlap, every committed tensor must
match its checksum, and the models must be exactly as before or exactly as
after the interrupted operation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyaccel
from pyaccel import _driver

from conftest import python_env
from pool_helpers import MiB, check_invariants, model_arrays, read_model, write_arrays

HERE = Path(__file__).resolve().parent


def content(name: str, version: int) -> list[np.ndarray]:
    rng = random.Random(f"{name}@{version}")
    n = rng.randint(1, 4)
    # at least one tensor is this version's own, so versions can be told apart
    return model_arrays(f"{name}@{version}", n=n, size=rng.choice([4096, 64 << 10, 512 << 10]),
                        shared=rng.randint(0, 1) if n > 1 else 0)


def do_op(path: str, op: str, name: str, version: int) -> None:
    pool = pyaccel.open_pool(path)
    if op == "evict":
        pool.evict(name)
    else:
        write_arrays(pool, name, content(name, version))


def state(pool: pyaccel.Pool) -> dict[str, int]:
    """name -> the version each ready model holds (found from its bytes)."""
    out = {}
    for m in pool.models():
        arrays = read_model(pool, m.name)
        for v in range(50):
            want = content(m.name, v)
            if len(want) == len(arrays) and all(np.array_equal(a, b) for a, b in zip(arrays, want)):
                out[m.name] = v
                break
        else:
            raise AssertionError(f"model {m.name} holds bytes of no version")
    return out


def crash_runs(path: str, kills: int, seed: int, max_runs: int = 500) -> dict[str, int]:
    """Run seeded random operations until ``kills`` of them were killed mid-way."""
    rng = random.Random(seed)
    stats = {"completed": 0, "killed": 0}
    versions: dict[str, int] = {}
    size = 0 if path.startswith("/dev/loop") else 48 * MiB
    with pyaccel.open_pool(path, create=True, size=size) as pool:
        before = state(pool)
    for i in range(max_runs):
        if stats["killed"] >= kills:
            break
        names = sorted(before)
        if len(names) >= 8 or (names and rng.random() < 0.3):
            op, name = "evict", rng.choice(names)
            version = before[name]
        elif names and rng.random() < 0.3:
            op, name = "reload", rng.choice(names)
        else:
            op, name = "load", f"m{i}"
        if op != "evict":
            versions[name] = versions.get(name, -1) + 1
            version = versions[name]
        after = dict(before)
        if op == "evict":
            del after[name]
        else:
            after[name] = version
        how = rng.choice(["write", "flush", "kill"])
        nth = rng.randint(1, 24)
        delay = rng.uniform(0, 0.02)
        pid = os.fork()
        if pid == 0:  # the writer: dies at the chosen point, or finishes
            try:
                if how != "kill":
                    _driver.fault_set(how, nth, "exit")
                do_op(path, op, name, version)
                os._exit(0)
            except BaseException:
                os._exit(3)
        if how == "kill":
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 86, -signal.SIGKILL), f"run {i}: writer failed ({code}) on {op} {name}"
        stats["completed" if code == 0 else "killed"] += 1
        with pyaccel.open_pool(path) as pool:
            check_invariants(pool)
            now = state(pool)
        if code == 0:
            assert now == after, f"run {i}: {op} {name} completed but the pool shows {now}"
        else:
            assert now in (before, after), f"run {i} ({how} {nth}): {op} {name}: {now} is neither {before} nor {after}"
        before = now
    return stats


def test_crash_at_random_points_tmpfs(shm_dir: Path) -> None:
    stats = crash_runs(str(shm_dir / "crash.pool"), 100, seed=1234)
    assert stats["killed"] >= 100 and stats["completed"] >= 5, stats


@pytest.mark.root
def test_crash_at_random_points_hugetlbfs(hugetlbfs_dir: Path) -> None:
    stats = crash_runs(str(hugetlbfs_dir / "crash.pool"), 30, seed=99)
    assert stats["killed"] >= 30, stats


@pytest.mark.root
def test_crash_at_random_points_loop(loopdev: str) -> None:
    stats = crash_runs(loopdev, 30, seed=7)
    assert stats["killed"] >= 30, stats


def run_workers(path: str, n: int, seconds: float) -> list[dict[str, int]]:
    procs = [subprocess.Popen([sys.executable, str(HERE / "pool_worker.py"), path, str(s), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
             for s in range(n)]
    results, failures = [], []
    try:
        for p in procs:
            out, err = p.communicate(timeout=seconds + 120)
            if p.returncode:
                failures.append(f"worker failed ({p.returncode}): {err}")
            else:
                results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert not failures, failures[0]
    return results


def concurrency(path: str, n: int, seconds: float) -> None:
    size = 0 if path.startswith("/dev/loop") else 48 * MiB
    pyaccel.open_pool(path, create=True, size=size).close()
    results = run_workers(path, n, seconds)
    total = {k: sum(r[k] for r in results) for k in results[0]}
    assert total["attach"] > 0 and total["load"] > 0 and total["evict"] > 0, total
    with pyaccel.open_pool(path) as pool:
        check_invariants(pool)


def test_eight_processes_at_once(pool_path: str) -> None:
    concurrency(pool_path, 8, 3.0)


@pytest.mark.soak
@pytest.mark.slow
def test_soak(request: pytest.FixtureRequest, shm_dir: Path) -> None:
    """16 processes for a minute with --soak; a 5-second taste without."""
    full = request.config.getoption("--soak")
    concurrency(str(shm_dir / "soak.pool"), 16 if full else 8, 60.0 if full else 5.0)
