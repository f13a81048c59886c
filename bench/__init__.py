"""pyaccel benchmark harness (``python -m bench`` / ``make bench``).

The types a figures plug-in uses live here: :class:`Figure`, :class:`BenchContext`,
and (re-exported lazily, since it pulls in numpy) :class:`bench.models.ModelRecord`.
This module stays import-light on purpose: measurement workers import it.
See ``bench/README.md`` for the plug-in contract.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from bench.measure import Stats
    from bench.models import ModelRecord

__all__ = ["Figure", "BenchContext", "ModelRecord", "figure_key"]


def figure_key(name: str, model: str | None) -> str:
    """The key of a figure in results: ``"model/name"``, or ``name`` when model-less."""
    return f"{model}/{name}" if model else name


@dataclass
class Figure:
    """One number of the benchmark, a baseline's or pyaccel's.

    ``value``          the figure in ``unit`` (None together with ``skipped``).
    ``unit``           one of: s, ms, us; GB/s, MB/s, GiB/s; B, KiB, MiB, GiB, MB, GB; x.
    ``model``          the model name it was measured on (a key of ``models``), or None.
    ``baseline_name``  what it is compared to: a figure name on the same model
                       (``"read_hot"``) or a full key ``"model/name"`` (to compare with
                       another model's figure, baseline or pyaccel). None: no ratio.
    ``target_ratio``   the target for ``ratio = value / baseline_value`` (units converted).
    ``better``         "higher": PASS when ratio >= target_ratio (or value >= target_value);
                       "lower":  PASS when ratio <= target_ratio (or value <= target_value).
    ``target_value``   an absolute target in ``unit`` for figures without a baseline
                       (e.g. streaming peak RSS <= 64 MiB above the interpreter).
    ``note``           one line printed under the table (why it misses, how measured...).
    ``skipped``        the reason, when the figure could not be measured here.
    ``details``        anything JSON-able (samples, min/max, RSS, ...); goes to the JSON.
    """

    name: str
    value: float | None
    unit: str
    model: str | None = None
    baseline_name: str | None = None
    target_ratio: float | None = None
    better: str = "higher"
    target_value: float | None = None
    note: str = ""
    skipped: str | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.better not in ("higher", "lower"):
            raise ValueError(f"Figure.better must be 'higher' or 'lower', not {self.better!r}")

    @property
    def key(self) -> str:
        return figure_key(self.name, self.model)

    @property
    def baseline_key(self) -> str | None:
        if not self.baseline_name:
            return None
        if "/" in self.baseline_name:
            return self.baseline_name
        return figure_key(self.baseline_name, self.model)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchContext:
    """What a figures plug-in gets besides the models.

    ``baselines`` holds every baseline Figure of this run by key ("model/name");
    ``only`` is the raw ``--only`` string (None: everything); ``measure`` is the
    :mod:`bench.measure` module (``run_isolated``,
    ``repeat_isolated``, ``HeldProcesses``, ``drop_caches``...).
    """

    workdir: str
    size: float
    repeat: int
    quick: bool
    latency_runs: int
    only: str | None = None
    baselines: dict[str, Figure] = field(default_factory=dict)
    can_drop_caches: tuple = (False, "unknown")
    odirect: tuple = (False, "unknown")
    log: Callable[[str], None] = print

    @property
    def measure(self):
        from bench import measure

        return measure

    @property
    def tmpdir(self) -> str:
        """A scratch directory under the work dir (on disk), created on demand."""
        d = os.path.join(self.workdir, "tmp")
        os.makedirs(d, exist_ok=True)
        return d

    def baseline(self, name: str, model: str | None = None) -> Figure | None:
        """A baseline Figure by name and model, or by full key; None if absent/skipped."""
        f = self.baselines.get(name if model is None else figure_key(name, model))
        return f if f is not None and f.value is not None else None

    def generate(self, name: str, size: float | None = None, **kw) -> "ModelRecord":
        """Generate (or reuse) a benchmark model, e.g. ``ctx.generate("big_external", 4.0)``."""
        from bench.models import generate

        return generate(name, self.workdir, self.size if size is None else size, **kw)

    def figure_from_stats(self, name: str, model: str | None, stats: "Stats", *,
                          metric: str = "time", nbytes: int | None = None,
                          **fig_kw: Any) -> Figure:
        """Build a Figure from repeated measurements, the way every baseline does:

        metric="time"        median wall time, s (details: min, max, samples)
        metric="throughput"  nbytes / median time, GB/s (details: best = nbytes / min time)
        metric="peak_delta"  median peak RSS above the pre-step RSS, MiB
        """
        from bench.baselines import figure_from_stats

        return figure_from_stats(name, model, stats, metric=metric, nbytes=nbytes, **fig_kw)


def __getattr__(name: str):
    if name == "ModelRecord":
        from bench.models import ModelRecord

        return ModelRecord
    raise AttributeError(name)
