"""Report: the table on stdout, the JSON file and the PNG chart.

Ratios: ``ratio = value / baseline_value`` after converting the baseline to the
figure's unit; PASS when ``ratio >= target_ratio`` for ``better="higher"`` and
``ratio <= target_ratio`` for ``better="lower"``.  A figure with no baseline but a
``target_value`` is compared directly.  Anything that cannot be judged (no
target, baseline skipped or absent, unit mismatch) shows "—".
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys

from bench import Figure

_UNITS = {
    # time -> seconds
    "s": ("time", 1.0), "ms": ("time", 1e-3), "us": ("time", 1e-6),
    # bytes
    "B": ("bytes", 1.0), "KiB": ("bytes", 1024.0), "MiB": ("bytes", 2.0 ** 20),
    "GiB": ("bytes", 2.0 ** 30), "KB": ("bytes", 1e3), "MB": ("bytes", 1e6), "GB": ("bytes", 1e9),
    # throughput -> bytes/s
    "GB/s": ("rate", 1e9), "MB/s": ("rate", 1e6), "GiB/s": ("rate", 2.0 ** 30),
    "MiB/s": ("rate", 2.0 ** 20),
    # dimensionless
    "x": ("ratio", 1.0), "": ("ratio", 1.0),
}


def convert(value: float, unit: str, to_unit: str) -> float:
    """Convert between compatible units; ValueError when they are not."""
    if unit == to_unit:
        return value
    try:
        k1, f1 = _UNITS[unit]
        k2, f2 = _UNITS[to_unit]
    except KeyError as e:
        raise ValueError(f"unknown unit {e.args[0]!r}") from None
    if k1 != k2:
        raise ValueError(f"cannot compare {unit} with {to_unit}")
    return value * f1 / f2


def evaluate(fig: Figure, figures: dict[str, Figure]) -> dict:
    """Ratio and PASS/MISS of ``fig`` against its baseline among ``figures``."""
    out = {"baseline_key": fig.baseline_key, "baseline_value": None, "baseline_unit": None,
           "ratio": None, "status": "—", "why": ""}
    if fig.value is None:
        out["why"] = f"skipped: {fig.skipped}" if fig.skipped else "no value"
        return out
    if fig.baseline_key:
        base = figures.get(fig.baseline_key)
        if base is None:
            out["why"] = f"baseline {fig.baseline_key} not measured in this run"
            return out
        out["baseline_value"], out["baseline_unit"] = base.value, base.unit
        if base.value is None:
            out["why"] = f"baseline {fig.baseline_key} skipped: {base.skipped}"
            return out
        try:
            bval = convert(base.value, base.unit, fig.unit)
        except ValueError as e:
            out["why"] = str(e)
            return out
        if bval == 0:
            out["why"] = "baseline is 0"
            return out
        ratio = fig.value / bval
        out["ratio"] = ratio
        if fig.target_ratio is not None:
            ok = ratio >= fig.target_ratio if fig.better == "higher" else ratio <= fig.target_ratio
            out["status"] = "PASS" if ok else "MISS"
        elif fig.target_value is not None:
            out["status"] = _abs_status(fig)
    elif fig.target_value is not None:
        out["status"] = _abs_status(fig)
    return out


def _abs_status(fig: Figure) -> str:
    ok = fig.value >= fig.target_value if fig.better == "higher" else fig.value <= fig.target_value
    return "PASS" if ok else "MISS"


def _target_text(fig: Figure) -> str:
    op = ">=" if fig.better == "higher" else "<="
    if fig.target_ratio is not None:
        return f"{op} {fig.target_ratio:.4g}x"
    if fig.target_value is not None:
        return f"{op} {fig.target_value:.4g} {fig.unit}"
    return "—"


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000 or abs(v) < 0.001:
            return f"{v:.3e}" if abs(v) < 0.001 else f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------
# machine info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _hypervisor() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _mount_of(path: str) -> dict:
    path = os.path.realpath(path)
    best = {"mountpoint": "", "fstype": "?", "source": "?"}
    try:
        with open("/proc/mounts") as f:
            for line in f:
                src, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                        len(mnt) >= len(best["mountpoint"]):
                    best = {"mountpoint": mnt, "fstype": fstype, "source": src}
    except OSError:
        pass
    return best


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return None


def machine_info(workdir: str) -> dict:
    u = os.uname()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "hypervisor": _hypervisor(),
        "ram_bytes": _meminfo("MemTotal"),
        "mem_available_bytes": _meminfo("MemAvailable"),
        "kernel": u.release,
        "machine": u.machine,
        "hostname": u.nodename,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "versions": {m: _version(m) for m in
                     ("numpy", "onnx", "onnxruntime", "safetensors", "matplotlib")},
        "root": os.geteuid() == 0,
        "workdir_fs": _mount_of(workdir),
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "loadavg": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------
# table


def table(figures: dict[str, Figure], kinds: dict[str, str]) -> tuple[str, dict[str, dict]]:
    """The text table and each figure's evaluation, by key."""
    rows = [("figure", "value", "unit", "baseline", "baseline value", "ratio", "target", "status")]
    evals: dict[str, dict] = {}
    notes: list[str] = []
    for key, fig in figures.items():
        ev = evaluate(fig, figures)
        evals[key] = ev
        tag = key if kinds.get(key) == "baseline" else f"* {key}"
        if fig.value is None:
            rows.append((tag, "skipped", fig.unit, ev["baseline_key"] or "", "", "", "", ""))
            notes.append(f"{key}: skipped: {fig.skipped}")
            continue
        bval = "" if ev["baseline_value"] is None else f"{_fmt(ev['baseline_value'])} {ev['baseline_unit']}"
        rows.append((tag, _fmt(fig.value), fig.unit, ev["baseline_key"] or "", bval,
                     "" if ev["ratio"] is None else f"{ev['ratio']:.4g}x",
                     _target_text(fig) if kinds.get(key) != "baseline" else "",
                     ev["status"] if kinds.get(key) != "baseline" else "—"))
        if fig.note:
            notes.append(f"{key}: {fig.note}")
        if ev["why"] and kinds.get(key) != "baseline":
            notes.append(f"{key}: {ev['why']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 4, 5}
    lines = []
    for j, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines.append("")
        lines.extend("  " + n for n in notes)
    return "\n".join(lines), evals


# ---------------------------------------------------------------------------
# JSON


def write_json(path: str, *, machine: dict, run: dict, capabilities: dict, models: dict,
               figures: dict[str, Figure], kinds: dict[str, str], evals: dict[str, dict],
               pyaccel: dict) -> None:
    def entry(key: str) -> dict:
        f = figures[key]
        d = f.to_dict()
        d.update(evals.get(key, {}))
        return d

    doc = {
        "schema": 1,
        "machine": machine,
        "run": run,
        "capabilities": capabilities,
        "models": {k: v.to_dict() for k, v in models.items()},
        "baselines": {k: entry(k) for k in figures if kinds[k] == "baseline"},
        "pyaccel": dict(pyaccel, figures={k: entry(k) for k in figures if kinds[k] == "pyaccel"}),
    }
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# PNG


_PANELS = (
    ("rate", "GB/s", "Throughput (GB/s, higher is better)", False),
    ("time", "s", "Time to load / ready (s, log scale, lower is better)", True),
    ("latency", "ms", "Inference latency (ms, lower is better)", False),
    ("bytes", "MiB", "Memory: peak RSS above interpreter, summed PSS (MiB)", False),
)


def _panel_of(fig: Figure) -> str | None:
    kind = _UNITS.get(fig.unit, (None,))[0]
    if kind == "time":
        return "latency" if ("infer" in fig.name or "latency" in fig.name) else "time"
    if kind == "rate":
        return "rate"
    if kind == "bytes":
        return None if fig.name == "model_size" else "bytes"
    return None


def _side_by_side(items: list) -> list:
    """Baselines grouped by model (in run order); each pyaccel bar right after the
    baseline it is compared to (after earlier pyaccel bars on that baseline), or at
    the end of its model's bars when its baseline is not in this panel.
    Items are (model, is_pyaccel, name, value, key, baseline_key)."""
    models = []
    for t in items:
        if t[0] not in models:
            models.append(t[0])
    out = []
    for m in models:
        out.extend(t for t in items if t[0] == m and not t[1])
    for t in items:
        if not t[1]:
            continue
        pos = next((i + 1 for i, o in enumerate(out) if not o[1] and o[4] == t[5]), None)
        if pos is None:
            same = [i + 1 for i, o in enumerate(out) if o[0] == t[0]]
            pos = same[-1] if same else len(out)
        else:
            while pos < len(out) and out[pos][1]:
                pos += 1
        out.insert(pos, t)
    return out


def write_png(path: str, figures: dict[str, Figure], kinds: dict[str, str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list] = {p[0]: [] for p in _PANELS}
    for key, f in figures.items():
        if f.value is None or f.value <= 0:
            continue
        p = _panel_of(f)
        if p is None:
            continue
        unit = next(u for k, u, _, _ in _PANELS if k == p)
        try:
            v = convert(f.value, f.unit, unit)
        except ValueError:
            continue
        panels[p].append((f.model or "", kinds.get(key) == "pyaccel", f.name, v, key,
                          f.baseline_key))
    used = [p for p in _PANELS if panels[p[0]]]
    if not used:
        used = [_PANELS[0]]
    heights = [max(1.5, 0.22 * len(panels[p[0]]) + 0.9) for p in used]
    fig, axes = plt.subplots(len(used), 1, figsize=(11, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (k, unit, ptitle, log) in zip(axes[:, 0], used):
        items = _side_by_side(panels[k])
        labels = [f"{t[0]}/{t[2]}" if t[0] else t[2] for t in items]
        vals = [t[3] for t in items]
        colors = ["#e07b00" if t[1] else "#4a78a8" for t in items]
        y = list(range(len(items)))
        ax.barh(y, vals, color=colors)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(ptitle, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        if log and vals:
            ax.set_xscale("log")
            ax.tick_params(axis="x", which="both", labelsize=7)
        for yi, v in zip(y, vals):
            ax.annotate(f"{v:,.0f}" if v >= 1000 else f"{v:.3g}", (v, yi), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=6)
        if not items:
            ax.text(0.5, 0.5, "no figures", transform=ax.transAxes, ha="center")
    handles = [plt.Rectangle((0, 0), 1, 1, color="#4a78a8"), plt.Rectangle((0, 0), 1, 1, color="#e07b00")]
    fig.legend(handles, ["baseline", "pyaccel"], loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
