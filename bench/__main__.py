"""``python -m bench``: generate the models, measure the baselines, add pyaccel's
figures (``bench/pyaccel_figures.py``, when present), print the table, write the
JSON and the PNG.  See ``bench/README.md``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback

from bench import BenchContext, Figure

PLUGIN_MODULE = "bench.pyaccel_figures"
PLUGIN_ENV = "PYACCEL_BENCH_PLUGIN"
PLUGIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyaccel_figures.py")

QUICK_SIZE = 0.01
QUICK_REPEAT = 1
QUICK_LATENCY_RUNS = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="pyaccel benchmark: baselines and pyaccel figures on the same files, "
                    "printed as a table, written as JSON and drawn as a PNG.")
    p.add_argument("--size", type=float, default=None,
                   help="scale of the models: big_external is ~1 GiB x SIZE, embedded "
                        "~0.5 GiB x SIZE (default 1.0; 0.01 with --quick)")
    p.add_argument("--workdir", default="bench-data",
                   help="where the models are generated, on disk (default ./bench-data)")
    p.add_argument("--only", default=None,
                   help="comma-separated: model names (big_external, embedded, many_small), "
                        "baseline names or globs (read_hot, ort_session*, ...), and/or "
                        "'pyaccel' for the plug-in's figures")
    p.add_argument("--repeat", type=int, default=None,
                   help="fresh processes per figure; median and min reported "
                        "(default 5; 1 with --quick)")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="session.run() calls per latency figure (default 20; 5 with --quick)")
    p.add_argument("--json", default="bench-results.json", help="results file (JSON)")
    p.add_argument("--png", default="bench-results.png", help="chart file (PNG)")
    p.add_argument("--quick", action="store_true",
                   help=f"CI mode: size {QUICK_SIZE}, {QUICK_REPEAT} repeat, "
                        f"{QUICK_LATENCY_RUNS} latency runs")
    p.add_argument("--no-pyaccel", action="store_true", help="do not load bench/pyaccel_figures.py")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the table")
    a = p.parse_args(argv)
    if a.size is None:
        a.size = QUICK_SIZE if a.quick else 1.0
    if a.repeat is None:
        a.repeat = QUICK_REPEAT if a.quick else 5
    if a.latency_runs is None:
        a.latency_runs = QUICK_LATENCY_RUNS if a.quick else 20
    if a.size <= 0 or a.repeat < 1 or a.latency_runs < 1:
        p.error("--size, --repeat and --latency-runs must be positive")
    return a


def _split_only(only: str | None, parser_error):
    from bench.baselines import baseline_names
    from bench.models import MODEL_NAMES

    if not only:
        return list(MODEL_NAMES), None, True
    toks = [t.strip() for t in only.split(",") if t.strip()]
    models = [t for t in toks if t in MODEL_NAMES]
    want_pyaccel = "pyaccel" in toks
    pats = [t for t in toks if t not in MODEL_NAMES and t != "pyaccel"]
    import fnmatch

    names = baseline_names()
    for t in pats:
        if not any(fnmatch.fnmatchcase(n, t) or n.startswith(t) for n in names):
            parser_error(f"--only: {t!r} matches no model, no baseline and is not 'pyaccel'. "
                         f"Models: {', '.join(MODEL_NAMES)}. Baselines: {', '.join(names)}.")
    if pats:
        baseline_patterns = pats
    elif want_pyaccel and not models:
        baseline_patterns = []  # "--only pyaccel": the plug-in's figures alone
    else:
        baseline_patterns = None  # all
    run_plugin = want_pyaccel or not pats
    return models or list(MODEL_NAMES), baseline_patterns, run_plugin


def load_plugin(log) -> tuple[object | None, str]:
    """Import bench/pyaccel_figures.py if present. Returns (module or None, reason).

    ``$PYACCEL_BENCH_PLUGIN=/path/to/file.py`` loads that file instead (tests use it
    to exercise the contract with a fake plug-in)."""
    override = os.environ.get(PLUGIN_ENV)
    path = override or PLUGIN_FILE
    if not os.path.exists(path):
        return None, f"{override or 'bench/pyaccel_figures.py'} missing"
    try:
        if override:
            spec = importlib.util.spec_from_file_location("pyaccel_figures_override", override)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(PLUGIN_MODULE)
    except Exception as e:  # noqa: BLE001 - e.g. pyaccel not built
        log(traceback.format_exc())
        return None, f"import failed: {type(e).__name__}: {e}"
    if not callable(getattr(mod, "figures", None)):
        return None, "bench/pyaccel_figures.py defines no figures(models, ctx)"
    return mod, "loaded"


def _as_figure(obj) -> Figure:
    if isinstance(obj, Figure):
        return obj
    if isinstance(obj, dict):
        return Figure(**obj)
    raise TypeError(f"figures() returned {type(obj).__name__}, expected bench.Figure")


def main(argv=None) -> int:
    ap_error = None
    args = parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    def parser_error(msg):
        nonlocal ap_error
        ap_error = msg

    model_names, patterns, run_plugin = _split_only(args.only, parser_error)
    if ap_error:
        print(f"python -m bench: error: {ap_error}", file=sys.stderr)
        return 2
    if args.no_pyaccel:
        run_plugin = False

    from bench import baselines, measure, models, report

    t_start = time.time()
    load_start = list(os.getloadavg())
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    ctx = BenchContext(workdir=workdir, size=args.size, repeat=args.repeat, quick=args.quick,
                       latency_runs=args.latency_runs, only=args.only, log=log)
    ctx.can_drop_caches = measure.can_drop_caches()

    # 1. models
    log(f"models in {workdir} (size {args.size:g})")
    recs = {}
    t0 = time.time()
    for name in model_names:
        t1 = time.time()
        recs[name] = models.generate(name, workdir, args.size)
        log(f"  {name:14s} {recs[name].weight_bytes / 2**20:9.1f} MiB {recs[name].tensor_count:6d} "
            f"tensors  {time.time() - t1:6.1f} s  {recs[name].path}")
    gen_s = time.time() - t0
    probe_file = next(iter(recs.values())).weights_file
    ctx.odirect = measure.odirect_supported(probe_file)

    # 2. baselines
    t0 = time.time()
    select = baselines.make_selector(patterns)
    base = {} if patterns == [] else baselines.run_baselines(recs, ctx, select)
    ctx.baselines = base
    base_s = time.time() - t0

    # 3. pyaccel
    t0 = time.time()
    pyfigs: dict[str, Figure] = {}
    plugin_info = {"available": False, "reason": "not run (--only/--no-pyaccel)"}
    if run_plugin:
        mod, why = load_plugin(log)
        plugin_info = {"available": mod is not None, "reason": why}
        if mod is None:
            print(f"pyaccel figures: not available ({why})", flush=True)
        else:
            log("pyaccel figures")
            try:
                for f in mod.figures(recs, ctx) or []:
                    f = _as_figure(f)
                    pyfigs[f.key] = f
            except measure.Skip as e:
                plugin_info = {"available": False, "reason": f"skipped: {e}"}
                print(f"pyaccel figures: not available (skipped: {e})", flush=True)
            except Exception as e:  # noqa: BLE001 - keep the baselines
                log(traceback.format_exc())
                plugin_info = {"available": False,
                               "reason": f"figures() failed: {type(e).__name__}: {e}",
                               "figures_before_failure": len(pyfigs)}
                print(f"pyaccel figures: failed ({type(e).__name__}: {e})", flush=True)
    py_s = time.time() - t0

    # 4. report
    figures: dict[str, Figure] = dict(base)
    kinds = {k: "baseline" for k in base}
    for k, f in pyfigs.items():
        if k in figures:
            log(f"warning: pyaccel figure {k} has the name of a baseline; kept as pyaccel:{k}")
            k = f"pyaccel:{k}"
        figures[k] = f
        kinds[k] = "pyaccel"
    text, evals = report.table(figures, kinds)
    machine = report.machine_info(workdir)
    print()
    print(f"pyaccel bench  size {args.size:g}  repeat {args.repeat}  "
          f"{machine['cpu_model']} x{machine['cpu_count']}  "
          f"{(machine['ram_bytes'] or 0) / 2**30:.0f} GiB  kernel {machine['kernel']}  "
          f"workdir on {machine['workdir_fs']['fstype']}")
    print(text)
    status = [e["status"] for k, e in evals.items() if kinds[k] == "pyaccel"]
    if status:
        print(f"\npyaccel: {status.count('PASS')} PASS, {status.count('MISS')} MISS, "
              f"{len(status) - status.count('PASS') - status.count('MISS')} not judged")

    total_s = time.time() - t_start
    run = {"argv": sys.argv[1:] if argv is None else list(argv), "size": args.size,
           "repeat": args.repeat, "latency_runs": args.latency_runs, "quick": args.quick,
           "only": args.only, "workdir": workdir,
           "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
           "durations_s": {"models": gen_s, "baselines": base_s, "pyaccel": py_s,
                           "total": total_s}}
    caps = {"drop_caches": list(ctx.can_drop_caches), "odirect": list(ctx.odirect)}
    report.write_json(args.json, machine=machine, run=run, capabilities=caps, models=recs,
                      figures=figures, kinds=kinds, evals=evals, pyaccel=plugin_info)
    try:
        report.write_png(args.png, figures, kinds,
                         f"pyaccel bench — size {args.size:g}, {machine['cpu_model']}, "
                         f"{machine['date']}")
        png_note = args.png
    except Exception as e:  # noqa: BLE001 - the JSON is what matters
        log(traceback.format_exc())
        png_note = f"not written ({type(e).__name__}: {e})"
    print(f"\nJSON: {args.json}   PNG: {png_note}   total {total_s:.1f} s "
          f"(models {gen_s:.1f} s, baselines {base_s:.1f} s, pyaccel {py_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
