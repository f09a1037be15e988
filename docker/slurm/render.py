#!/usr/bin/env python3
"""Render docker/slurm/gcd_fit.sbatch.template into a submittable SLURM script.

    python docker/slurm/render.py --nodes 2 --gpus-per-node 4 --partition gpu \\
        --config experiments/quickstart.yaml --run-name qs-2x4 --venv ~/venvs/gcd > job.sbatch
    sbatch job.sbatch

Placeholders in the template are ``{{name}}``. Every placeholder must get a value and every value must
have a placeholder, or rendering stops with an error naming them (no half-filled script is written).
Values that end up in shell commands are quoted; values that end up in ``#SBATCH`` lines (which sbatch
does not unquote) are checked against a strict pattern. Extra ``gcd fit`` arguments go after ``--``.
Standard library only, so it runs on a login node without the package installed.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

TEMPLATE = Path(__file__).with_name("gcd_fit.sbatch.template")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,-]*$")
# minutes | minutes:seconds | hours:minutes:seconds | days-hours | days-hours:minutes | days-hours:minutes:seconds
TIME_RE = re.compile(r"^(\d+-\d+(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2})$")
SBATCH_OPT_RE = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*(=\S+)?$")
SAFE_PATH_RE = re.compile(r"^[^\s'\"\\$`%]+$")


class RenderError(ValueError):
    """A template or a value that cannot be rendered into a valid job script."""


def placeholders(text: str) -> set[str]:
    """The names of all ``{{name}}`` placeholders in ``text``."""
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str | None]) -> str:
    """Fill every placeholder of ``text`` from ``values``; refuse unknown, unfilled or malformed ones."""
    used = placeholders(text)
    unknown = sorted(used - set(values))
    if unknown:
        raise RenderError("template uses unknown placeholder(s): " + ", ".join(f"{{{{{n}}}}}" for n in unknown))
    unused = sorted(set(values) - used)
    if unused:
        raise RenderError("value(s) given for placeholder(s) not in the template: " + ", ".join(unused))
    missing = sorted(name for name in used if values[name] is None)
    if missing:
        raise RenderError("no value for placeholder(s): " + ", ".join(f"{{{{{n}}}}}" for n in missing))
    out = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    leftover = re.search(r"\{\{", out)  # a lone "}}" is ordinary bash: ${A:-${B}}
    if leftover:
        line = out.count("\n", 0, leftover.start()) + 1
        raise RenderError(
            f"malformed placeholder left in the rendered script at line {line}: {out.splitlines()[line - 1].strip()!r}"
        )
    return out


def _check(pattern: re.Pattern, value: str, what: str) -> str:
    if not pattern.match(value):
        raise RenderError(f"{what} {value!r} has characters that are not allowed here (pattern {pattern.pattern})")
    return value


def _no_newline(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise RenderError(f"{what} must be one line")
    return value


def build_values(args: argparse.Namespace) -> dict[str, str | None]:
    """The value of each placeholder of the standard template, from parsed command-line options."""
    run_name = _check(NAME_RE, args.run_name, "--run-name")
    workdir = os.path.abspath(os.path.expanduser(args.workdir)) if args.workdir else os.getcwd()
    _check(SAFE_PATH_RE, workdir, "--workdir")
    run_root = _no_newline(args.run_root, "--run-root")
    config = _no_newline(args.config, "--config")

    extra_sbatch = [f"#SBATCH {_check(SBATCH_OPT_RE, opt, '--sbatch')}" for opt in args.sbatch]

    setup: list[str] = [f"module load {shlex.quote(_no_newline(m, '--module'))}" for m in args.module]
    if args.venv:
        setup.append(f"source {shlex.quote(os.path.abspath(os.path.expanduser(args.venv)))}/bin/activate")
    setup.extend(args.setup)
    if not setup:
        setup.append("# environment: `gcd` must be on PATH (render with --venv, --module, --setup or a container)")

    mounts = [workdir] + [_check(SAFE_PATH_RE, m, "--container-mount") for m in args.container_mount]
    launcher, srun_args = "", ""
    if args.apptainer:
        binds = ",".join(mounts)
        launcher = (
            f"apptainer exec --nv --bind {shlex.quote(binds)} --pwd {shlex.quote(workdir)} "
            f"{shlex.quote(args.apptainer)}"
        )
    elif args.pyxis:
        pairs = ",".join(f"{m}:{m}" if ":" not in m else m for m in mounts)
        srun_args = (
            f"--container-image={shlex.quote(args.pyxis)} --container-mounts={shlex.quote(pairs)} "
            f"--container-workdir={shlex.quote(workdir)}"
        )
    elif args.container_mount:
        raise RenderError("--container-mount needs --apptainer or --pyxis")

    job_name = _check(NAME_RE, args.job_name or run_name, "--job-name")
    if job_name in ("bash", "interactive"):
        raise RenderError(f"job name {job_name!r}: Lightning treats such jobs as interactive and ignores SLURM")

    values: dict[str, str | None] = {
        "job_name": job_name,
        "nodes": str(args.nodes),
        "gpus_per_node": str(args.gpus_per_node),
        "cpus_per_task": str(args.cpus_per_task),
        "time": _check(TIME_RE, args.time, "--time"),
        "partition": _check(PARTITION_RE, args.partition, "--partition"),
        "workdir": workdir,
        "extra_sbatch": "\n".join(extra_sbatch) if extra_sbatch else "# (no extra #SBATCH options)",
        "setup": "\n".join(setup),
        "run_dir": shlex.quote(posixpath.join(run_root, run_name)),
        "srun_args": srun_args,
        "launcher": launcher,
        "config": shlex.quote(config),
        "run_root": shlex.quote(run_root),
        "run_name": run_name,
        "accelerator": args.accelerator,
        "extra_args": " ".join(shlex.quote(a) for a in args.extra),
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise RenderError(f"--set expects NAME=VALUE, got {item!r}")
        if name in values:
            raise RenderError(f"--set {name}: this placeholder is set by its own option")
        values[name] = value
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="render.py",
        description="Render the gcd fit SLURM template (multi-node DDP, auto-requeue).",
        epilog="Arguments after `--` are appended to `gcd fit` (e.g. -- --trainer.max_steps 100000).",
    )
    p.add_argument("--nodes", type=_positive_int, required=True, help="number of nodes")
    p.add_argument(
        "--gpus-per-node", type=_positive_int, required=True, help="GPUs per node = tasks per node = trainer.devices"
    )
    p.add_argument("--config", required=True, help="gcd config, relative to --workdir or absolute")
    p.add_argument("--run-name", required=True, help="run directory name: <run-root>/<run-name> (resume key)")
    p.add_argument("--partition", required=True, help="SLURM partition")
    p.add_argument("--time", default="24:00:00", help="time limit per (re)start (default 24:00:00)")
    p.add_argument("--job-name", default=None, help="SLURM job name (default: the run name)")
    p.add_argument("--cpus-per-task", type=_positive_int, default=8, help="CPU cores per GPU task (default 8)")
    p.add_argument("--workdir", default=None, help="job working directory, shared by all nodes (default: here)")
    p.add_argument("--run-root", default="runs", help="folder of run directories, relative to --workdir")
    p.add_argument(
        "--accelerator",
        default="gpu",
        choices=["gpu", "cuda", "cpu", "auto"],
        help="trainer.accelerator (default gpu; cpu only for tests)",
    )
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPT",
        help="extra #SBATCH option, e.g. --sbatch=--account=abc (repeatable)",
    )
    env = p.add_argument_group("environment (choose one of --venv, --apptainer, --pyxis)")
    env.add_argument("--module", action="append", default=[], help="`module load NAME` first (repeatable)")
    env.add_argument("--setup", action="append", default=[], metavar="CMD", help="extra setup line (repeatable)")
    excl = env.add_mutually_exclusive_group()
    excl.add_argument("--venv", help="virtual environment to activate (holds `gcd`)")
    excl.add_argument(
        "--apptainer", metavar="IMAGE", help="run in an Apptainer/Singularity image (.sif or docker://...)"
    )
    excl.add_argument(
        "--pyxis", metavar="IMAGE", help="run in a container through pyxis/enroot (srun --container-image)"
    )
    env.add_argument(
        "--container-mount",
        action="append",
        default=[],
        metavar="PATH",
        help="extra host folder to mount in the container (the workdir always is)",
    )
    p.add_argument(
        "--template", type=Path, default=TEMPLATE, help="template file (default: the one beside this script)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value of an extra placeholder of a custom --template, inserted verbatim",
    )
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.extra = extra
    try:
        text = args.template.read_text()
        script = render(text, build_values(args))
    except (RenderError, OSError) as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    workdir = args.workdir or os.getcwd()
    if not os.path.isabs(args.config) and not os.path.exists(os.path.join(os.path.expanduser(workdir), args.config)):
        print(f"render.py: warning: config {args.config} not found under {workdir}", file=sys.stderr)
    if args.out:
        args.out.write_text(script)
        os.chmod(args.out, 0o755)
    else:
        sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
