"""Tests for pyaccel.config: sizes, partitions, and the env > user file > system file precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyaccel import config
from pyaccel.config import ConfigError
from pyaccel.errors import PyaccelError


@pytest.mark.parametrize(
    "text, value",
    [
        ("4096", 4096),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("4G", 4 << 30),
        ("4GiB", 4 << 30),
        ("4GB", 4 << 30),
        (" 1.5G ", 3 << 29),
        ("2T", 2 << 40),
        ("64K", 64 << 10),
        (1024, 1024),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert config.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "0", "1.5.2M", "4 G B", "lots"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="size"):
        config.parse_size(text)


def test_parse_partitions() -> None:
    parts = config.parse_partitions("models:3G, scratch:1G,b.x-y_z:512M")
    assert parts == {"models": 3 << 30, "scratch": 1 << 30, "b.x-y_z": 512 << 20}
    assert list(parts) == ["models", "scratch", "b.x-y_z"]  # order kept
    assert config.parse_partitions("  ") == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("a", "is not NAME:SIZE"),
        ("a:1G,,b:1G", "is not NAME:SIZE"),
        (":1G", "is not NAME:SIZE"),
        ("a:", "is not NAME:SIZE"),
        ("a b:1G", "may only hold"),
        ("../x:1G", "may only hold"),
        ("a:1G,a:2G", "given twice"),
        ("a:1Q", "not a size"),
    ],
)
def test_parse_partitions_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse_partitions(text, source="/etc/pyaccel.conf")


def _files(tmp_path: Path, system: str | None, user: str | None) -> dict[str, Path]:
    s, u = tmp_path / "etc" / "pyaccel.conf", tmp_path / "home" / ".config" / "pyaccel.conf"
    for p, text in ((s, system), (u, user)):
        if text is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    return {"system_path": s, "user_path": u}


def test_nothing_configured(tmp_path: Path) -> None:
    cfg = config.load(env={}, **_files(tmp_path, None, None))
    assert cfg == config.Config()
    assert cfg.source("path") == "default" and cfg.files == []


def test_precedence(tmp_path: Path) -> None:
    files = _files(
        tmp_path,
        "[pool]\npath = /dev/dax0.0\nsize = 4G\npartitions = a:1G,b:2G\n",
        "[pool]\npath = /dev/hugepages/mine.pool\nsize = 512M\n",
    )
    s, u = str(files["system_path"]), str(files["user_path"])
    # User file over system file, key by key: partitions stay from the system file.
    with pytest.raises(ConfigError, match="more than the pool size"):
        config.load(env={}, **files)  # 3G of partitions in a 512M pool: caught, naming both sources
    files["user_path"].write_text("[pool]\npath = /dev/hugepages/mine.pool\nsize = 8G\n")
    cfg = config.load(env={}, **files)
    assert (cfg.path, cfg.size, cfg.partitions) == ("/dev/hugepages/mine.pool", 8 << 30, {"a": 1 << 30, "b": 2 << 30})
    assert cfg.sources == {"path": u, "size": u, "partitions": s}
    assert cfg.files == [s, u]
    # The environment over both.
    cfg = config.load(env={"PYACCEL_POOL": "/dev/shm/env.pool"}, **files)
    assert cfg.path == "/dev/shm/env.pool" and cfg.source("path") == "environment PYACCEL_POOL"
    assert cfg.source("size") == u
    # An empty PYACCEL_POOL does not pin anything.
    assert config.load(env={"PYACCEL_POOL": ""}, **files).path == "/dev/hugepages/mine.pool"


def test_system_only(tmp_path: Path) -> None:
    files = _files(tmp_path, "[pool]\nsize = 1073741824\n[loader]\nthreads = 4\n", None)
    cfg = config.load(env={}, **files)
    assert cfg.size == 1 << 30 and cfg.path is None  # other sections are left to others
    assert cfg.source("size") == str(files["system_path"])


def test_default_locations(tmp_path: Path) -> None:
    assert config.user_config_path({"HOME": "/home/u"}) == Path("/home/u/.config/pyaccel.conf")
    assert config.user_config_path({"HOME": "/home/u", "XDG_CONFIG_HOME": "/x"}) == Path("/x/pyaccel.conf")
    assert config.user_config_path({"HOME": "/home/u", "XDG_CONFIG_HOME": "rel"}) == Path("/home/u/.config/pyaccel.conf")
    assert config.system_config_path() == Path("/etc/pyaccel.conf")
    (tmp_path / ".config").mkdir()
    (tmp_path / ".config" / "pyaccel.conf").write_text("[pool]\npath = ~/pool.bin\n")
    cfg = config.load(env={"HOME": str(tmp_path)}, system_path=tmp_path / "none")
    assert cfg.path == str(Path("~/pool.bin").expanduser())  # ~ expands for the running user


@pytest.mark.parametrize(
    "text, exc, message",
    [
        ("[pool]\nsise = 4G\n", ConfigError, r"\[pool\] sise: unknown key"),
        ("[pool]\nsize = huge\n", ConfigError, r"\[pool\] size: 'huge' is not a size"),
        ("[pool]\npath =\n", ConfigError, "empty path"),
        ("[pool]\npartitions = a\n", ConfigError, "is not NAME:SIZE"),
        ("path = /x\n", ConfigError, "not a valid INI file"),
        ("[pool]\nsize = 1G\nsize = 2G\n", ConfigError, "not a valid INI file"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, text: str, exc: type[Exception], message: str) -> None:
    files = _files(tmp_path, None, text)
    with pytest.raises(exc, match=message) as info:
        config.load(env={}, **files)
    assert str(files["user_path"]) in str(info.value)
    assert isinstance(info.value, PyaccelError) and isinstance(info.value, ValueError)


def test_partitions_last_may_take_the_rest() -> None:
    assert config.parse_partitions("a:1G,b:0") == {"a": 1 << 30, "b": 0}
    with pytest.raises(config.ConfigError, match="only the last partition"):
        config.parse_partitions("a:0,b:1G")
