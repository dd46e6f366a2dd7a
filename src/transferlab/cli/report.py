"""`transferlab-report [SWEEP_DIR] [--baseline KEY=VALUE]`: the sweep report
(`transferlab.report.build_report`) from the command line."""

import argparse
import sys
from pathlib import Path

from transferlab.report import BASELINE, SWEEPS_ROOT, build_report, latest_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-report",
        description="Summarise a Hydra multirun sweep of transferlab-train.",
    )
    parser.add_argument("sweep_dir", nargs="?", type=Path,
                        help=f"sweep folder (default: the latest under {SWEEPS_ROOT}/)")
    parser.add_argument("--baseline", default="=".join(BASELINE), metavar="KEY=VALUE",
                        help="the rows others are compared with, e.g. init=he (default) or "
                             "freeze=full; each row gets the closest one")
    parser.add_argument("--compare", default="", metavar="KEY[,KEY...]",
                        help="compare these keys' configurations (e.g. freeze) each at its own "
                             "setting of the other swept keys, selected on val, judged on test")
    args = parser.parse_args(argv)
    key, sep, value = args.baseline.partition("=")
    if not (key and sep and value):
        parser.error(f"--baseline={args.baseline}: expected KEY=VALUE, e.g. init=he")
    try:
        compare = tuple(k for k in args.compare.split(",") if k)
        result = build_report(args.sweep_dir or latest_sweep(), baseline=(key, value), compare=compare)
    except FileNotFoundError as err:
        print(f"transferlab-report: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    print(f"wrote {', '.join(str(p) for p in result.files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
