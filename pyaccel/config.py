"""Configuration: where the default pool lives, how big it is, how it is partitioned.

Settings come from three layers, highest precedence first:

1. the environment: ``PYACCEL_POOL`` (the pool path);
2. the user's file: ``$XDG_CONFIG_HOME/pyaccel.conf``, by default ``~/.config/pyaccel.conf``;
3. the system file: ``/etc/pyaccel.conf``.

Each value is taken from the highest layer that sets it, so a user file that
only sets ``size`` keeps the system file's ``path``.  :func:`load` records, for
every value, which layer it came from (:attr:`Config.sources`), so that
``pyaccel devices`` can say *why* a pool was chosen.

The files are INI (:mod:`configparser`)::

    [pool]
    path = /dev/hugepages-pyaccel/pyaccel.pool
    size = 4G
    partitions = models:3G,scratch:1G

Sizes accept a byte count or a number with a binary suffix ``K``, ``M``,
``G``, ``T`` (``512M``, ``4G``, ``1.5G``; ``KiB``/``MB``-style spellings are
read the same way, always as powers of 1024).  Unknown keys in ``[pool]`` are
an error (a typo must not silently fall back to a default); other sections are
left to other parts of pyaccel.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import PyaccelError

__all__ = [
    "Config",
    "ConfigError",
    "ENV_POOL",
    "SYSTEM_CONFIG",
    "load",
    "parse_partitions",
    "parse_size",
    "system_config_path",
    "user_config_path",
]

#: Environment variable that pins the pool path, above both files.
ENV_POOL = "PYACCEL_POOL"

#: The system-wide configuration file.
SYSTEM_CONFIG = "/etc/pyaccel.conf"

_SECTION = "pool"
_KEYS = ("path", "size", "partitions")
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(PyaccelError, ValueError):
    """A configuration value cannot be used.

    Parameters
    ----------
    source : str
        Where the value came from: a file path or ``"environment PYACCEL_POOL"``.
    key : str
        The key at fault, e.g. ``"size"``.
    detail : str
        What is wrong.
    """

    def __init__(self, source: str, key: str, detail: str) -> None:
        super().__init__(source, key, detail)
        self.source = source
        self.key = key
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.source}: [{_SECTION}] {self.key}: {self.detail}"


@dataclass
class Config:
    """The merged configuration.

    Attributes
    ----------
    path : str or None
        The pinned pool path, or None when nothing pins it (discovery chooses).
    size : int or None
        Pool size in bytes, or None (the pool's own default / the whole device).
    partitions : dict of str to int
        Partition name to size in bytes, in the order given; empty when unset.
    sources : dict of str to str
        For each key that was set (``"path"``, ``"size"``, ``"partitions"``),
        where it came from: ``"environment PYACCEL_POOL"`` or a file path.
    files : list of str
        The configuration files that existed and were read, lowest precedence first.
    """

    path: str | None = None
    size: int | None = None
    partitions: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def source(self, key: str) -> str:
        """Return where ``key`` came from, or ``"default"`` when no layer set it."""
        return self.sources.get(key, "default")


def parse_size(text: str | int, *, source: str = "<value>", key: str = "size") -> int:
    """Parse a size such as ``"512M"``, ``"4G"``, ``"1.5G"`` or ``"1048576"`` into bytes.

    Parameters
    ----------
    text : str or int
        The size.  Suffixes are binary (``K`` = 1024).
    source, key : str
        Used in the error message only.

    Returns
    -------
    int
        The size in bytes, at least 1.

    Raises
    ------
    ConfigError
        If the text is not a size, or is zero.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ConfigError(source, key, f"{text!r} is not a size (use bytes or a number with K, M, G or T, e.g. 512M)")
        number, suffix = m.groups()
        mult = _SUFFIXES[suffix.upper()]
        if "." in number:
            # Fractions are only meaningful with a suffix; round down to whole bytes.
            value = int(float(number) * mult)
        else:
            value = int(number) * mult
    if value <= 0:
        raise ConfigError(source, key, f"{text!r}: a size must be positive")
    return value


def parse_partitions(text: str, *, source: str = "<value>", key: str = "partitions") -> dict[str, int]:
    """Parse ``"a:1G,b:2G"`` into ``{"a": 1073741824, "b": 2147483648}`` (order kept).

    A size of ``0`` for the last partition means "what is left of the pool".

    Raises
    ------
    ConfigError
        On an empty or malformed item, a bad name, a bad size or a duplicate name.
    """
    parts: dict[str, int] = {}
    text = text.strip()
    if not text:
        return parts
    for item in text.split(","):
        item = item.strip()
        name, sep, size = item.partition(":")
        name = name.strip()
        if not sep or not name or not size.strip():
            raise ConfigError(source, key, f"{item!r} is not NAME:SIZE (e.g. models:3G)")
        if not _NAME_RE.match(name):
            raise ConfigError(source, key, f"partition name {name!r} may only hold letters, digits, '_', '.', '-'")
        if name in parts:
            raise ConfigError(source, key, f"partition {name!r} is given twice")
        if size.strip() == "0":
            parts[name] = 0  # "what is left": only the last partition may say so
        else:
            parts[name] = parse_size(size, source=source, key=key)
    zero = [n for n, v in parts.items() if v == 0]
    if zero and zero != [list(parts)[-1]]:
        raise ConfigError(source, key, f"only the last partition may take what is left (size 0), not {zero[0]!r}")
    return parts


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """Return the user's config file path: ``$XDG_CONFIG_HOME/pyaccel.conf`` or ``~/.config/pyaccel.conf``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    if not base or not os.path.isabs(base):
        # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return Path(base) / "pyaccel.conf"


def system_config_path() -> Path:
    """Return the system config file path (``/etc/pyaccel.conf``)."""
    return Path(SYSTEM_CONFIG)


def _read_file(path: Path) -> dict[str, str] | None:
    """Return the ``[pool]`` keys of one INI file, None if it does not exist."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=str(path))
    except FileNotFoundError:
        return None
    except configparser.Error as e:
        raise ConfigError(str(path), "-", f"not a valid INI file: {e}") from None
    if not parser.has_section(_SECTION):
        return {}
    values = dict(parser.items(_SECTION))
    for k in values:
        if k not in _KEYS:
            raise ConfigError(str(path), k, f"unknown key (known: {', '.join(_KEYS)})")
    return values


def load(
    *,
    env: Mapping[str, str] | None = None,
    user_path: str | os.PathLike[str] | None = None,
    system_path: str | os.PathLike[str] | None = None,
) -> Config:
    """Load and merge the configuration.

    Parameters
    ----------
    env : mapping, optional
        The environment to read ``PYACCEL_POOL`` (and ``XDG_CONFIG_HOME``/``HOME``) from;
        :data:`os.environ` by default.
    user_path, system_path : path-like, optional
        Override the two file locations (tests, ``pyaccel --config``).

    Returns
    -------
    Config
        The merged values and where each came from.

    Raises
    ------
    ConfigError
        If a file is not valid INI, has an unknown ``[pool]`` key, or a value is malformed,
        or the partitions add up to more than ``size``.  A file that does not exist is skipped.
    """
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, str]]] = []
    cfg = Config()
    # Lowest precedence first, so that later layers overwrite.
    for path in (
        Path(system_path) if system_path is not None else system_config_path(),
        Path(user_path) if user_path is not None else user_config_path(env),
    ):
        values = _read_file(path)
        if values is not None:
            cfg.files.append(str(path))
            layers.append((str(path), values))
    pinned = env.get(ENV_POOL)
    if pinned:
        layers.append((f"environment {ENV_POOL}", {"path": pinned}))

    for source, values in layers:
        for key, raw in values.items():
            raw = raw.strip()
            if key == "path":
                if not raw:
                    raise ConfigError(source, key, "empty path")
                cfg.path = os.path.expanduser(raw)
            elif key == "size":
                cfg.size = parse_size(raw, source=source, key=key)
            elif key == "partitions":
                cfg.partitions = parse_partitions(raw, source=source, key=key)
            cfg.sources[key] = source

    if cfg.size is not None and cfg.partitions:
        total = sum(cfg.partitions.values())
        if total > cfg.size:
            raise ConfigError(
                cfg.source("partitions"),
                "partitions",
                f"partitions add up to {total} bytes, more than the pool size {cfg.size} "
                f"(from {cfg.source('size')})",
            )
    return cfg
