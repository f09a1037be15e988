"""The ``gcd`` command.

``gcd data ...`` builds and inspects datasets; ``gcd fit|validate|test|predict`` run LightningCLI. Errors caused by
the user's input (a bad file, option or config) print one line ``gcd: error: ...`` and exit with status 2; bugs still
show their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_gcd.errors import GcdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcd", description="Grand canonical voxel and particle diffusion for atomic structures"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from lightning_gcd.cli_compare import add_compare_parser
    from lightning_gcd.cli_data import add_data_parser
    from lightning_gcd.cli_evaluate import add_evaluate_parser
    from lightning_gcd.cli_sample import add_sample_parser

    add_data_parser(sub)
    add_sample_parser(sub)
    add_evaluate_parser(sub)
    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        try:
            from lightning_gcd.cli_train import run_lightning

            return run_lightning(argv)
        except GcdError as exc:
            print(f"gcd: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            from lightning_gcd.cli_data import run_data

            return run_data(args)
        if args.command == "sample":
            from lightning_gcd.cli_sample import run_sample

            return run_sample(args)
        if args.command == "evaluate":
            from lightning_gcd.cli_evaluate import run_evaluate

            return run_evaluate(args)
        if args.command == "compare":
            from lightning_gcd.cli_compare import run_compare

            return run_compare(args)
        parser.error(f"unknown command {args.command}")
    except GcdError as exc:
        print(f"gcd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gcd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
