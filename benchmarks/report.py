"""``pydiff bench``: run the suites, then write results.json, report.md and the plots into one folder."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import traceback
from pathlib import Path
from typing import Dict, List

import benchmarks
from benchmarks.common import machine


def discover() -> List:
    """Every ``benchmarks/bench_<area>.py`` that defines ``run``, in report order."""
    suites = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("bench_"):
            module = importlib.import_module(f"benchmarks.{info.name}")
            if hasattr(module, "run"):
                suites.append(module)
    return sorted(suites, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=("quick", "full"), default="quick",
                        help="quick: minutes on a 2-core CPU; full: every production shape")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="bench-out", help="folder for results.json, report.md and plots")
    parser.add_argument("--only", nargs="*", default=None, metavar="AREA",
                        help="run only these areas (module names without bench_)")
    parser.add_argument("--baseline", default=None, metavar="RESULTS_JSON",
                        help="an earlier run's results.json: also report each figure then and now")


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    if args.device == "cuda" and not torch.cuda.is_available():
        print("pydiff bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suites = discover()
    if args.only:
        known = {m.__name__.split(".bench_")[-1] for m in suites}
        unknown = set(args.only) - known
        if unknown:
            print(f"pydiff bench: unknown area(s) {sorted(unknown)}; known: {sorted(known)}", file=sys.stderr)
            return 2
        suites = [m for m in suites if m.__name__.split(".bench_")[-1] in args.only]
    try:
        baseline = load_baseline(args.baseline) if args.baseline else None
    except ValueError as exc:
        print(f"pydiff bench: {exc}", file=sys.stderr)
        return 2
    quick = args.suite == "quick"
    results: Dict[str, object] = {"machine": machine(), "suite": args.suite, "device": args.device, "areas": {}}
    failures = []
    bar = tqdm(suites, desc="pydiff bench", unit="area")
    for module in bar:
        area = module.__name__.split(".bench_")[-1]
        bar.set_postfix_str(area)
        try:
            rows = module.run(quick=quick, device=args.device, progress=True)
            results["areas"][area] = {"title": module.TITLE, "rows": rows}
        except Exception as exc:  # noqa: BLE001 - one broken area must not lose the others
            failures.append(area)
            results["areas"][area] = {"title": getattr(module, "TITLE", area), "rows": [],
                                      "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        # after every area, so a run cut short keeps what it measured
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    report = write_report(results, suites, out, baseline)
    print(report_summary(results))
    if baseline is not None:
        print("\n" + baseline_comparison(results, baseline))
    print(f"\nwrote {out / 'results.json'}, {report} and {len(list(out.glob('*.png')))} plot(s)")
    if failures:
        print(f"pydiff bench: area(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def write_report(results: Dict[str, object], suites, out: Path, baseline: Dict[str, object] = None) -> Path:
    """report.md: the machine, then one section per area (its tables and plots), then the figures against an
    earlier run's (``baseline``) when given."""
    m = results["machine"]
    lines = [f"# pydiff benchmark report — {results['suite']} suite on {results['device']}", "",
             "Every figure is ours beside a peer measured in the same run; speedup = peer median / our median.",
             "Times are median (min–max) over repeated calls after warm-up.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    by_area = {m_.__name__.split(".bench_")[-1]: m_ for m_ in suites}
    for area, data in results["areas"].items():
        lines += ["", f"## {data['title']}", ""]
        if "error" in data:
            lines.append(f"**This area failed:** `{data['error']}`")
            continue
        module = by_area[area]
        lines.append(module.section(data["rows"]))
        if hasattr(module, "plots"):
            for png in module.plots(data["rows"], out):
                lines += ["", f"![{png.stem}]({png.name})"]
    if baseline is not None:
        lines += ["", "## Against the baseline", "", baseline_comparison(results, baseline)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_area(module_name: str, rows, out, suite: str, device: str) -> Path:
    """results.json and report.md of one area's rows (the suite ``benchmarks.bench_<area>``, run as a script) in
    ``out``, in ``pydiff bench``'s format; returns the report."""
    module = importlib.import_module(module_name)  # (a script runs as __main__: the report knows the module)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "suite": suite, "device": device,
               "areas": {module_name.split(".bench_")[-1]: {"title": module.TITLE, "rows": rows}}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return write_report(results, [module], out)


def load_baseline(path) -> Dict[str, object]:
    """An earlier run's results.json (checked before anything runs)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--baseline {path}: cannot read it ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--baseline {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("areas"), dict):
        raise ValueError(f"--baseline {path}: not a results.json written by pydiff bench (no 'areas')")
    return data


def _figures(results: Dict[str, object]) -> Dict[tuple, Dict[str, object]]:
    """Rows with a speedup, by (area, case, shape, peer)."""
    return {(area, r["name"], r["shape"], r["peer"]): r for area, data in results["areas"].items()
            for r in data.get("rows", []) if "speedup" in r}


def baseline_comparison(results: Dict[str, object], baseline: Dict[str, object]) -> str:
    """Markdown: every figure of ``results`` that ``baseline`` (an earlier results.json) also has, same area, case,
    shape and peer: our median time then and now (then / now > 1: faster now) and the speedup over the peer then
    and now. The baseline may come from another card or versions: its machine is named first."""
    then = baseline.get("machine", {})
    now = results.get("machine", {})
    describe = lambda m: (f"{m.get('gpu') or m.get('processor')}, torch {m.get('torch')}, "  # noqa: E731
                          f"triton {m.get('triton')}, {str(m.get('date', ''))[:10]}")
    lines = [f"Baseline: {describe(then)}. Now: {describe(now)}.", "",
             "| case | shape | peer | ours ms then | ours ms now | then / now | speedup then | speedup now |",
             "|---|---|---|---|---|---|---|---|"]
    old, new = _figures(baseline), _figures(results)
    common = [key for key in new if key in old]
    for key in common:
        a, b = old[key]["ours_ms"]["median"], new[key]["ours_ms"]["median"]
        lines.append(f"| {key[1]} | {key[2]} | {key[3]} | {a:.3f} | {b:.3f} | {a / b:.2f}x | "
                     f"{old[key]['speedup']:.2f}x | {new[key]['speedup']:.2f}x |")
    missing = len(new) - len(common)
    if not common:
        lines.append("| (no figure in common) | | | | | | | |")
    if missing:
        lines += ["", f"{missing} figure(s) of this run have no counterpart in the baseline."]
    return "\n".join(lines)


def report_summary(results: Dict[str, object]) -> str:
    """The short table printed last: per area, the figures with a speedup."""
    lines = ["", f"{'area':<18} {'case':<36} {'shape':<14} {'vs':<36} {'speedup':>8}"]
    for area, data in results["areas"].items():
        for r in data["rows"]:
            if "speedup" in r:
                label = r["area"] if r.get("area") and r["area"] != area else area
                lines.append(f"{label[:18]:<18} {str(r['name'])[:36]:<36} {str(r['shape'])[:14]:<14} "
                             f"{str(r['peer'])[:36]:<36} {r['speedup']:>7.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
