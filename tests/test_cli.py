"""The ``pyaccel`` command line, end to end in subprocesses (``python -m pyaccel ...``) on tmpfs pools.

Every command runs for real: tables for people, ``--json`` that parses,
errors as one line on standard error with a non-zero exit status and no
traceback.  The default pool is pinned with ``PYACCEL_POOL`` to a scratch
directory, so the machine's own default pool is never touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ROOT, python_env
from onnx_models import Generated, make_external_one_file
from pool_helpers import corrupt

import pyaccel
from pyaccel import cli

MiB = 1 << 20


def run_cli(*args: str, env: dict[str, str], rc: int | None = 0,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m pyaccel ARGS``; checks the exit status unless ``rc`` is None."""
    r = subprocess.run([sys.executable, "-m", "pyaccel", *args], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=ROOT)
    if rc is not None:
        assert r.returncode == rc, f"pyaccel {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def one_line_error(r: subprocess.CompletedProcess[str], rc: int = 1) -> str:
    """The single error line of a failed command (and nothing on standard output)."""
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pyaccel"), lines[0]
    return lines[0]


@pytest.fixture
def env(shm_dir: Path) -> dict[str, str]:
    """Child environment: this checkout, the default pool pinned into the scratch dir, no user config."""
    e = python_env()
    e["PYACCEL_POOL"] = str(shm_dir / "default.pool")
    e["XDG_CONFIG_HOME"] = str(shm_dir / "config")
    e.pop("PYACCEL_SYSFS_ROOT", None)
    e.pop("PYACCEL_MOUNTINFO", None)
    return e


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """A small ONNX model with its weights in one external file (on disk, not in a pool)."""
    d = tmp_path_factory.mktemp("cli-model")
    yield make_external_one_file(str(d))


# ---------------------------------------------------------------------------
# help


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, io, contextlib\n"
            "from pyaccel.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0\n"
            "heavy = [m for m in ('numpy', 'onnx', 'onnxruntime', 'pyaccel._driver', 'pyaccel.pool')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert 'smoke-test' in buf.getvalue()\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=python_env(), timeout=60)
    r = subprocess.run([sys.executable, "-m", "pyaccel", "--help"], capture_output=True, text=True,
                       env=python_env(), timeout=60)
    assert r.returncode == 0
    for command in ("devices", "pool", "load", "ls", "evict", "run", "bench", "smoke-test"):
        assert command in r.stdout


@pytest.mark.parametrize("argv", [
    ["devices"], ["pool"], ["pool", "create"], ["pool", "status"], ["pool", "fsck"], ["pool", "verify"],
    ["load"], ["ls"], ["evict"], ["run"], ["smoke-test"],
])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pyaccel " + " ".join(argv))
    assert "--json" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"pyaccel {pyaccel.__version__}"


def test_sizes_and_partitions_parse() -> None:
    assert cli.parse_partitions_arg("a:1G,b:0") == [("a", 1 << 30), ("b", 0)]
    assert cli.parse_partitions_arg("models:512M") == [("models", 512 * MiB)]
    for bad, msg in [("a:0,b:1G", "only the last"), ("a", "NAME:SIZE"), ("a:1G,a:1G", "twice"),
                     ("a/b:1G", "may only hold"), ("a:12X", "is not a size")]:
        with pytest.raises(Exception, match=msg):
            cli.parse_partitions_arg(bad)
    assert cli.human_size(1536) == "1.5 KiB"
    assert cli.human_size(4 << 30) == "4.0 GiB"
    assert cli.human_size(12) == "12 B"


# ---------------------------------------------------------------------------
# every command, end to end


def test_every_command_end_to_end(env: dict[str, str], shm_dir: Path, model: Generated) -> None:
    pool = str(shm_dir / "work.pool")

    # pool create, with partitions; then status, human and JSON
    r = run_cli("pool", "create", pool, "--size", "64M", "--partitions", "models:16M,rest:0", env=env)
    assert f"created pool {pool}: 64.0 MiB on tmpfs" in r.stdout
    assert re.search(r"models 16.0 MiB, rest \d+\.\d MiB", r.stdout)  # the rest: what the layout leaves
    r = run_cli("pool", "status", pool, env=env)
    assert "kind        tmpfs" in r.stdout and "PARTITION" in r.stdout and "0 ready" in r.stdout
    st = json.loads(run_cli("pool", "status", pool, "--json", env=env).stdout)
    assert st["size"] == 64 * MiB and st["kind"] == "tmpfs" and st["n_models"] == 0
    assert [p["name"] for p in st["partitions"]] == ["models", "rest"]
    assert st["partitions"][0]["size"] == 16 * MiB

    # devices: the pinned default pool, and what is there
    devs = json.loads(run_cli("--json", "devices", env=env).stdout)
    assert any(d["kind"] == "tmpfs" and d["path"] == "/dev/shm" for d in devs["devices"])
    assert devs["default_pool"]["path"] == env["PYACCEL_POOL"]
    assert devs["default_pool"]["source"] == "environment PYACCEL_POOL"
    assert devs["default_pool"]["state"] == {"exists": False}
    r = run_cli("devices", env=env)
    assert "KIND" in r.stdout and "/dev/shm" in r.stdout
    assert f"default pool: {env['PYACCEL_POOL']}" in r.stdout and "does not exist yet" in r.stdout

    # load: streamed, then attached; --json
    r = run_cli("load", model.path, "--pool", pool, "--verify", "--no-progress", env=env)
    assert "streamed 4 tensors" in r.stdout and "verified: 4 tensors" in r.stdout
    info = json.loads(run_cli("load", model.path, "--pool", pool, "--json", env=env).stdout)
    assert info["streamed"] is False and info["n_tensors"] == 4 and info["pool"] == pool
    assert info["name"] == os.path.realpath(model.path)
    info = json.loads(run_cli("load", model.path, "--pool", pool, "--name", "copy", "--partition", "rest",
                              "--json", env=env).stdout)
    assert info["streamed"] is True and info["name"] == "copy"

    # ls: table and JSON, --all
    r = run_cli("ls", "--pool", pool, env=env)
    header, *rows = r.stdout.strip().splitlines()
    assert header.split()[:3] == ["ID", "SIZE", "UNIQUE"] and len(rows) == 2
    assert rows[1].rstrip().endswith(f"copy (from {os.path.realpath(model.path)})")
    listing = json.loads(run_cli("ls", "--pool", pool, "--all", "--json", env=env).stdout)
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {os.path.realpath(model.path), "copy"}
    assert by_name["copy"]["partition"] == "rest" and by_name["copy"]["source"] == os.path.realpath(model.path)
    assert by_name["copy"]["in_use"] is False

    # verify and fsck
    r = run_cli("pool", "verify", pool, env=env)
    assert "2 models: 8 tensors" in r.stdout and "match their checksums" in r.stdout
    v = json.loads(run_cli("pool", "verify", pool, "copy", "--json", env=env).stdout)
    assert v["ok"] is True and v["tensors"] == 4 and v["bad"] == []
    f = json.loads(run_cli("pool", "fsck", pool, "--json", env=env).stdout)
    assert f["remaining_problems"] == 0 and f["report"]["report"] == ["no problems found"]

    # run: --random, --repeat, --input, --save
    out = json.loads(run_cli("run", model.path, "--pool", pool, "--random", "--repeat", "3", "--json",
                             env=env).stdout)
    assert out["load"]["streamed"] is False
    assert out["inputs"] == [{"name": "X", "dtype": "float32", "shape": [4, 64]}]
    assert out["outputs"] == [{"name": "Y", "dtype": "float32", "shape": [2, 32]}]
    assert out["latency"]["runs"] == 3 and out["latency"]["min"] > 0
    x = shm_dir / "x.npy"
    np.save(x, model.feeds["X"])
    r = run_cli("run", model.path, "--pool", pool, "--input", f"X={x}", "--save", str(shm_dir / "out"), env=env)
    assert "output  Y" in r.stdout and "latency:" in r.stdout
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_prepacking", "1")
    want = ort.InferenceSession(model.path, so, providers=["CPUExecutionProvider"]).run(None, model.feeds)[0]
    got = np.load(shm_dir / "out" / "Y.npy")
    assert got.tobytes() == want.tobytes()  # bit-identical to onnxruntime on the file

    # evict by source path, then by name
    r = run_cli("evict", model.path, "--pool", pool, env=env)
    assert r.stdout.startswith(f"evicted '{os.path.realpath(model.path)}'")
    ev = json.loads(run_cli("evict", "copy", "--pool", pool, "--json", env=env).stdout)
    assert ev["evicted"] == "copy" and ev["freed"] > 0
    assert run_cli("ls", "--pool", pool, env=env).stdout.strip() == f"{pool}: no models"


def test_default_pool_commands(env: dict[str, str], model: Generated) -> None:
    """Without --pool: the read-only commands refuse a default pool that does not exist (and do
    not create it); load creates it; then they all work on it."""
    default = env["PYACCEL_POOL"]
    for args in (["ls"], ["pool", "status"], ["pool", "fsck"], ["pool", "verify"], ["evict", "x"]):
        line = one_line_error(run_cli(*args, env=env, rc=None))
        assert f"no pool at the default pool {default}" in line and "pyaccel pool create" in line
        assert not os.path.exists(default)
    env = dict(env, PYACCEL_POOL=default)
    r = run_cli("load", model.path, "--no-progress", env=env)
    assert f"-> {default} as" in r.stdout and "streamed" in r.stdout
    assert os.path.exists(default)
    assert len(json.loads(run_cli("ls", "--json", env=env).stdout)["models"]) == 1
    assert json.loads(run_cli("pool", "status", "--json", env=env).stdout)["path"] == default


# ---------------------------------------------------------------------------
# errors: one line, a non-zero exit status, never a traceback


def test_errors_are_one_line(env: dict[str, str], shm_dir: Path, model: Generated) -> None:
    pool = str(shm_dir / "e.pool")
    missing = str(shm_dir / "missing.pool")
    line = one_line_error(run_cli("ls", "--pool", missing, env=env, rc=None))
    assert line == f"pyaccel: error: no pool at {missing}; create it with `pyaccel pool create {missing}`"
    assert not os.path.exists(missing)
    line = one_line_error(run_cli("pool", "create", pool, "--size", "12X", env=env, rc=None), rc=2)
    assert "argument --size: '12X' is not a size" in line
    line = one_line_error(run_cli("pool", "create", pool, "--partitions", "a:0,b:1G", env=env, rc=None), rc=2)
    assert "only the last partition may have size 0" in line
    one_line_error(run_cli("frobnicate", env=env, rc=None), rc=2)

    run_cli("pool", "create", pool, "--size", "16M", env=env)
    line = one_line_error(run_cli("pool", "create", pool, "--size", "16M", env=env, rc=None))
    assert "already holds a pyaccel pool" in line and "--force" in line
    run_cli("pool", "create", pool, "--size", "32M", "--force", env=env)
    assert json.loads(run_cli("pool", "status", pool, "--json", env=env).stdout)["size"] == 32 * MiB

    line = one_line_error(run_cli("evict", "nosuchmodel", "--pool", pool, env=env, rc=None))
    assert line == f"pyaccel: error: pool {pool}: no model named 'nosuchmodel'"
    line = one_line_error(run_cli("pool", "verify", pool, "nosuchmodel", env=env, rc=None))
    assert "no model named 'nosuchmodel'" in line
    line = one_line_error(run_cli("load", str(shm_dir / "nope.onnx"), "--pool", pool, env=env, rc=None))
    assert "No such file or directory" in line and "nope.onnx" in line
    bad = shm_dir / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf\xff\xff")
    line = one_line_error(run_cli("load", str(bad), "--pool", pool, env=env, rc=None))
    assert str(bad) in line and "malformed" in line
    line = one_line_error(run_cli("run", model.path, "--pool", pool, env=env, rc=None))
    assert "input 'X'" in line and "--random" in line
    line = one_line_error(run_cli("run", model.path, "--pool", pool, "--input", "X", env=env, rc=None), rc=2)
    assert "--input 'X': expected NAME=file.npy" in line
    line = one_line_error(run_cli("run", model.path, "--pool", pool, "--input", f"X={shm_dir / 'none.npy'}",
                                  env=env, rc=None))
    assert "No such file or directory" in line and "none.npy" in line
    np.save(shm_dir / "q.npy", np.zeros(3, np.float32))
    line = one_line_error(run_cli("run", model.path, "--pool", pool, "--input", f"Q={shm_dir / 'q.npy'}",
                                  env=env, rc=None))
    assert "the model has no input 'Q'" in line
    np.save(shm_dir / "x.npy", np.zeros((3, 3), np.float32))
    line = one_line_error(run_cli("run", model.path, "--pool", pool, "--input", f"X={shm_dir / 'x.npy'}",
                                  env=env, rc=None))
    assert line.startswith("pyaccel: error: onnxruntime:")
    # a file that is not a pool
    junk = shm_dir / "junk"
    junk.write_bytes(os.urandom(64 << 10))
    line = one_line_error(run_cli("pool", "status", str(junk), env=env, rc=None))
    assert str(junk) in line
    line = one_line_error(run_cli("pool", "create", str(junk), "--size", "16M", env=env, rc=None))
    assert "not a pyaccel pool" in line and "--force" in line
    # --debug shows the traceback instead
    r = run_cli("--debug", "evict", "nosuchmodel", "--pool", pool, env=env, rc=None)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ModelNotFoundError" in r.stderr


def test_evict_refuses_a_leased_model(env: dict[str, str], shm_dir: Path, model: Generated) -> None:
    pool = str(shm_dir / "lease.pool")
    run_cli("pool", "create", pool, "--size", "16M", env=env)
    holder = ("import sys, pyaccel\n"
              "m = pyaccel.load_model(sys.argv[1], sys.argv[2], progress=False, name='held')\n"
              "w = m.weights[next(iter(m.weights))]\n"
              "print('ready', flush=True)\n"
              "sys.stdin.readline()\n")
    with subprocess.Popen([sys.executable, "-c", holder, model.path, pool], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        r = run_cli("ls", "--pool", pool, "--json", env=env)
        assert json.loads(r.stdout)["models"][0]["in_use"] is True
        assert "yes" in run_cli("ls", "--pool", pool, env=env).stdout.splitlines()[1]
        line = one_line_error(run_cli("evict", "held", "--pool", pool, env=env, rc=None))
        assert line.startswith(f"pyaccel: error: pool {pool}: ") and "in use" in line
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    run_cli("evict", "held", "--pool", pool, env=env)


def test_fsck_and_verify_exit_1_on_damage(env: dict[str, str], shm_dir: Path, model: Generated) -> None:
    pool = str(shm_dir / "dmg.pool")
    run_cli("pool", "create", pool, "--size", "16M", env=env)
    run_cli("load", model.path, "--pool", pool, "--name", "m", env=env)
    with pyaccel.open_pool(pool, readonly=True) as p:
        t = max(p.tensors("m"), key=lambda t: t.nbytes)
    # a flipped tensor byte: verify names the tensor, exit 1
    corrupt(pool, t.offset + 100)
    r = run_cli("pool", "verify", pool, env=env, rc=1)
    assert f"model 'm': tensor '{t.name}' does not match its checksum" in r.stdout
    v = json.loads(run_cli("pool", "verify", pool, "m", "--json", env=env, rc=1).stdout)
    assert v["ok"] is False and len(v["bad"]) == 1
    corrupt(pool, t.offset + 100)  # flipped back
    run_cli("pool", "verify", pool, env=env)
    # a damaged superblock copy: fsck reports it (exit 1), --repair mends it (exit 0)
    corrupt(pool, 100)
    r = run_cli("pool", "fsck", pool, env=env, rc=1)
    assert "primary superblock copy is damaged" in r.stdout and "--repair" in r.stdout
    r = run_cli("pool", "fsck", pool, "--repair", env=env)
    assert "rewritten" in r.stdout and "0 remain" in r.stdout
    f = json.loads(run_cli("pool", "fsck", pool, "--json", env=env).stdout)
    assert f["remaining_problems"] == 0


def test_bench_delegates_or_says_why(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli("bench", "--help", env=env)
    assert r.stdout.startswith("usage: python -m bench")
    monkeypatch.setattr(cli, "_source_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyaccel: error: `pyaccel bench` is only available from a source checkout")


def test_smoke_test_command_is_the_script(env: dict[str, str], shm_dir: Path) -> None:
    r = run_cli("smoke-test", str(shm_dir / "junk.file"), "--size", "1M", env=env, rc=2)
    assert "too small" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("smoke-test", "--help", env=env)
    assert "persistence" in r.stdout and "--force" in r.stdout


def test_pool_create_on_a_small_data_file_says_it_holds_data(env: dict[str, str], shm_dir: Path) -> None:
    junk = shm_dir / "small.bin"
    junk.write_bytes(os.urandom(5000))
    line = one_line_error(run_cli("pool", "create", str(junk), "--size", "16M", env=env, rc=None))
    assert "not a pyaccel pool" in line and "--force" in line
