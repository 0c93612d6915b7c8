"""The ``pydiff`` command line: info | sample | bench | export | distill."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module


def _cmd_info(args) -> int:
    from .runtime import format_info, info

    data = info()
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


def _delegate(module: str):
    """Subcommands whose code lives with its feature: ``module.add_arguments(parser)`` + ``module.main(args)``."""

    def run(args) -> int:
        return import_module(module).main(args)

    return run


# name -> (help, module providing add_arguments/main, or None for built-ins)
SUBCOMMANDS = {
    "info": ("versions, devices and usable backends", None),
    "sample": ("sample a grid from a bundled model and print its quality", "pydiff.models.cli"),
    "bench": ("run the benchmark suites and write the report", "benchmarks.report"),
    "export": ("export a model or a few-step sampler for deployment", "pydiff.export.cli"),
    "distill": ("distill a few-step student from a bundled model", "pydiff.distill.cli"),
}


def _ensure_benchmarks_importable() -> None:
    """``benchmarks/`` lives beside the package in a source checkout (it is not part of the wheel)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "report.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def build_parser() -> argparse.ArgumentParser:
    _ensure_benchmarks_importable()
    parser = argparse.ArgumentParser(prog="pydiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help=SUBCOMMANDS["info"][0])
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_cmd_info)
    for name, (help_text, module) in SUBCOMMANDS.items():
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text)
        try:
            import_module(module).add_arguments(p)
        except ImportError as exc:
            p.set_defaults(func=lambda args, n=name, e=exc: _unavailable(n, e))
            continue
        p.set_defaults(func=_delegate(module))
    return parser


def _unavailable(name: str, exc: ImportError) -> int:
    module = SUBCOMMANDS[name][1]
    missing = exc.name or ""
    if missing.startswith("pydiff.") and (module + ".").startswith(missing + "."):  # the command's own package
        print(f"pydiff {name}: not built yet (pydiff has no {missing})", file=sys.stderr)
    else:
        print(f"pydiff {name}: not available in this installation ({exc})", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
