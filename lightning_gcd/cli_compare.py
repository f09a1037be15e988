"""``gcd compare RUN_DIR [RUN_DIR ...] --out DIR [--labels A B ...]``: compare training runs side by side.

Reads what the ``MetricsHistory`` callback leaves in each run directory (``metrics.jsonl``,
``curves.json``) and writes to DIR:

``report.md``              one column per run; rows: model, epoch and global step of the last sampled
                           validation, the final ``val/loss``, then every metric of the last sampled
                           validation (headline metrics first, then ``val/coordination/<Z>/<k>``)
``report.html``            the same table and every figure below, self-contained apart from the PNGs
``rdf.png``                g(r) of every run over the reference
``coordination.png``       coordination-number fractions per species, reference and runs side by side
``n_atoms.png``            atoms-per-structure histograms (fractions of structures)
``metrics_vs_epoch.png``   every scalar metric against the epoch, one panel per metric, all runs
``runs/<label>/``          each run's own ``rdf.png``, ``coordination.png``, ``n_atoms.png``
                           (``lightning_gcd.metrics.plots``)

Nothing here needs W&B: it is the offline counterpart of overlaying runs in the W&B UI.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_text_atomic

METRICS_FILE = "metrics.jsonl"  # the names written by lightning_gcd.callbacks.metrics_history
CURVES_FILE = "curves.json"
META_KEYS = ("epoch", "global_step", "model", "sampled", "time")
#: rows shown first, in this order (``val/`` names); everything else follows
HEADLINE = (
    "val/rdf_l1",
    "val/coordination_l1",
    "val/phase_match",
    "val/displacement_rms",
    "val/n_atoms_mean",
    "val/n_atoms_error",
    "val/min_distance_violations",
    "val/min_distance",
    "val/sp_fraction",
    "val/sp2_fraction",
    "val/sp3_fraction",
    "val/spectrum_l2",
)
HINT = (
    "train with the MetricsHistory callback (trainer.callbacks: - class_path: "
    "lightning_gcd.callbacks.MetricsHistory), which writes it at every validation"
)


def add_compare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="compare training runs: a metrics table and overlaid g(r)/coordination/count plots",
        description="Read metrics.jsonl and curves.json (MetricsHistory callback) of each run directory and write "
        "report.md, report.html and PNG plots that compare the runs.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (e.g. runs/smoke_voxel)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.html and the PNGs")
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="one name per run for the table and legends (default: the directory names)",
    )
    return p


# --------------------------------------------------------------------------------------------------
# reading runs
@dataclass
class Run:
    """One run directory: all validation records, the last sampled one, its curves."""

    directory: Path
    label: str
    records: list[dict[str, Any]]
    curves: dict[str, Any]
    sampled: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.sampled[-1]

    @property
    def final_loss(self) -> float | None:
        for record in reversed(self.records):
            if record.get("val/loss") is not None:
                return record["val/loss"]
        return None

    def metric_names(self) -> list[str]:
        return [k for k in self.last if k not in META_KEYS]


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a run killed while appending: ignore its partial last line
                break
            raise GcdError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise GcdError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


def _curves_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """Back to what ``StructureMetrics.curves()`` returned: numpy arrays (null -> NaN), int species keys."""
    out = dict(data)
    for key in ("r", "g", "g_reference", "n_atoms", "n_atoms_hist", "n_atoms_hist_reference"):
        if key in out and out[key] is not None:
            out[key] = np.asarray([np.nan if v is None else v for v in out[key]], dtype=float)
    for key in ("coordination", "coordination_reference"):
        out[key] = {
            int(z): np.asarray([np.nan if v is None else v for v in values], dtype=float)
            for z, values in (out.get(key) or {}).items()
        }
    out["dr"] = float(out.get("dr") or 0.0)
    return out


def read_run(directory: str | Path, label: str | None = None) -> Run:
    """Read one run directory; ``GcdError`` naming the directory when something is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GcdError(f"{directory}: no such run directory")
    metrics_path, curves_path = directory / METRICS_FILE, directory / CURVES_FILE
    if not metrics_path.is_file():
        raise GcdError(f"{directory}: no {METRICS_FILE}; {HINT}")
    records = _read_records(metrics_path)
    sampled = [r for r in records if r.get("sampled", True) and any(k not in META_KEYS and k != "val/loss" for k in r)]
    if not sampled:
        raise GcdError(
            f"{directory}: {METRICS_FILE} has no sampled validation yet (the model generates samples "
            "every model.sample_every_n_epochs validations, when val_samples > 0)"
        )
    if not curves_path.is_file():
        raise GcdError(f"{directory}: no {CURVES_FILE}; {HINT}")
    try:
        curves = _curves_from_json(json.loads(curves_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise GcdError(f"{curves_path}: unreadable curves ({type(exc).__name__}: {exc})") from None
    missing = [
        k for k in ("r", "g", "g_reference", "n_atoms", "n_atoms_hist", "n_atoms_hist_reference") if k not in curves
    ]
    if missing:
        raise GcdError(f"{curves_path}: missing {', '.join(missing)}")
    return Run(directory, label or directory.resolve().name, records, curves, sampled)


def _default_labels(directories: Sequence[Path]) -> list[str]:
    labels = [d.resolve().name for d in directories]
    if len(set(labels)) < len(labels):
        labels = ["/".join(d.resolve().parts[-2:]) for d in directories]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


# --------------------------------------------------------------------------------------------------
# table
def _coordination_key(name: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"val/coordination/(\d+)/(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def metric_value(record: dict[str, Any], name: str) -> Any:
    """``record[name]``; a ``val/coordination/<Z>/<k>`` row missing from a record that has other rows of
    species Z is 0 (the model logs only the k where samples or reference have atoms)."""
    if name in record:
        return record[name]
    cn = _coordination_key(name)
    if cn is not None and any(k.startswith(f"val/coordination/{cn[0]}/") for k in record):
        return 0.0
    return None


def ordered_metric_names(runs: Sequence[Run]) -> list[str]:
    """Union of the last sampled metrics of every run: headline metrics, other metrics, coordination rows."""
    names: list[str] = []
    for run in runs:
        for name in run.metric_names():
            if name not in names and name != "val/loss":
                names.append(name)

    def rank(name: str):
        cn = _coordination_key(name)
        if name in HEADLINE:
            return (0, HEADLINE.index(name), 0, name)
        if name.startswith("val/phase_match/"):
            return (0, HEADLINE.index("val/phase_match"), 1, name)
        if cn is not None:
            return (2, cn[0], cn[1], name)
        return (1, 0, 0, name)

    return sorted(names, key=rank)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def table_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [
        ("model", [str(r.last.get("model", "?")) for r in runs]),
        ("epoch (last sampled validation)", [_fmt(r.last.get("epoch")) for r in runs]),
        ("global step", [_fmt(r.last.get("global_step")) for r in runs]),
        ("val/loss (final)", [_fmt(r.final_loss) for r in runs]),
    ]
    for name in ordered_metric_names(runs):
        values = [metric_value(r.last, name) for r in runs]
        rows.append(
            (name, ["–" if v is None and name not in r.last else _fmt(v) for r, v in zip(runs, values, strict=True)])
        )
    return rows


def markdown_table(runs: Sequence[Run]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    head = "| metric | " + " | ".join(cell(r.label) for r in runs) + " |"
    sep = "|---|" + "---:|" * len(runs)
    body = ["| " + cell(name) + " | " + " | ".join(cell(v) for v in values) + " |" for name, values in table_rows(runs)]
    return "\n".join([head, sep, *body])


def html_table(runs: Sequence[Run]) -> str:
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(r.label)}</th>" for r in runs) + "</tr>"
    body = "".join(
        "<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>"
        for name, values in table_rows(runs)
    )
    return f"<table>\n<thead>{head}</thead>\n<tbody>{body}</tbody>\n</table>"


# --------------------------------------------------------------------------------------------------
# plots (matplotlib Agg canvas, no pyplot, like lightning_gcd.metrics.plots)
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_rdf_overlay(runs: Sequence[Run], path: Path) -> Path:
    from lightning_gcd.metrics.plots import REFERENCE_COLOR, _save

    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    first = runs[0].curves
    ax.plot(first["r"], first["g_reference"], color=REFERENCE_COLOR, lw=2.2, label="reference")
    for run in runs[1:]:
        c = run.curves
        same = c["g_reference"].shape == first["g_reference"].shape and np.allclose(
            np.nan_to_num(c["g_reference"]), np.nan_to_num(first["g_reference"]), atol=1e-9
        )
        if not same:
            ax.plot(c["r"], c["g_reference"], color=REFERENCE_COLOR, lw=1.2, ls="--", label=f"reference ({run.label})")
    for run, color in zip(runs, _colors(len(runs)), strict=True):
        ax.plot(run.curves["r"], run.curves["g"], color=color, lw=1.3, label=run.label)
    r_hi = max(float(run.curves["r"][-1] + 0.5 * run.curves["dr"]) for run in runs)
    ax.set_xlim(0, r_hi)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_title("Radial distribution function")
    ax.legend(frameon=False)
    return _save(fig, path)


def _grouped_bars(ax, series: list[tuple[str, Any, np.ndarray, np.ndarray]]) -> None:
    """``series``: (label, color, x, values); bars side by side, x range trimmed to where any value is > 0."""
    used = [x[np.nan_to_num(v) > 0] for _, _, x, v in series if len(v)]
    used = np.concatenate(used) if used else np.array([])
    width = 0.8 / max(1, len(series))
    for i, (label, color, x, values) in enumerate(series):
        if used.size:
            keep = (x >= used.min() - 1) & (x <= used.max() + 1)
            x, values = x[keep], values[keep]
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values), width=width, color=color, label=label)
    ax.legend(frameon=False, fontsize=8)


def plot_coordination_bars(runs: Sequence[Run], path: Path) -> Path:
    from lightning_gcd.metrics.plots import REFERENCE_COLOR, _save, _symbol

    species = sorted(
        {z for run in runs for z in (*run.curves["coordination"], *run.curves["coordination_reference"])}
    ) or [0]
    fig = _figure(7.0, 2.8 * len(species))
    axes = fig.subplots(len(species), 1, squeeze=False)[:, 0]
    for ax, z in zip(axes, species, strict=True):
        series = []
        ref = runs[0].curves["coordination_reference"].get(z)
        if ref is not None:
            series.append(("reference", REFERENCE_COLOR, np.arange(len(ref)), ref))
        for run, color in zip(runs, _colors(len(runs)), strict=True):
            values = run.curves["coordination"].get(z)
            if values is not None:
                series.append((run.label, color, np.arange(len(values)), values))
        _grouped_bars(ax, series)
        ax.set_ylabel(f"{_symbol(z)}: fraction of atoms")
    axes[-1].set_xlabel("coordination number")
    axes[0].set_title("Coordination numbers")
    return _save(fig, path)


def plot_atom_count_bars(runs: Sequence[Run], path: Path) -> Path:
    from lightning_gcd.metrics.plots import REFERENCE_COLOR, _save

    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()

    def frac(h: np.ndarray) -> np.ndarray:
        h = np.nan_to_num(np.asarray(h, dtype=float))
        return h / h.sum() if h.sum() > 0 else h

    first = runs[0].curves
    series = [("reference", REFERENCE_COLOR, first["n_atoms"], frac(first["n_atoms_hist_reference"]))]
    for run, color in zip(runs, _colors(len(runs)), strict=True):
        series.append((run.label, color, run.curves["n_atoms"], frac(run.curves["n_atoms_hist"])))
    _grouped_bars(ax, series)
    ax.set_xlabel("atoms per structure (last bin: at least)")
    ax.set_ylabel("fraction of structures")
    ax.set_title("Atoms per structure")
    return _save(fig, path)


def plot_metrics_vs_epoch(runs: Sequence[Run], path: Path) -> Path:
    from lightning_gcd.metrics.plots import _save

    names = ["val/loss", *ordered_metric_names(runs)]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig = _figure(3.2 * cols, 2.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = _colors(len(runs))
    for ax, name in zip(axes, names, strict=False):  # a rows x 4 grid: the last row may have spare axes
        for run, color in zip(runs, colors, strict=True):
            source = run.records if name == "val/loss" else run.sampled
            pts = [
                (r["epoch"], v)
                for r in source
                if (v := metric_value(r, name)) is not None and r.get("epoch") is not None
            ]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, marker="o", ms=3, lw=1.2, color=color, label=run.label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 4), frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def write_report(runs: Sequence[Run], out: Path) -> dict[str, Any]:
    """Write the tables and plots; returns {"markdown": path, "html": path, "plots": [paths]}."""
    from lightning_gcd.metrics.plots import save_all_plots

    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_rdf_overlay(runs, out / "rdf.png"),
        plot_coordination_bars(runs, out / "coordination.png"),
        plot_atom_count_bars(runs, out / "n_atoms.png"),
        plot_metrics_vs_epoch(runs, out / "metrics_vs_epoch.png"),
    ]
    per_run: list[tuple[Run, list[Path]]] = []
    used: set[str] = set()
    for run in runs:
        name = _safe(run.label)
        while name in used:
            name += "_"
        used.add(name)
        per_run.append((run, save_all_plots(run.curves, out / "runs" / name)))

    sources = "\n".join(
        f"- **{r.label}**: `{r.directory}` ({r.last.get('model', '?')}, {len(r.sampled)} sampled "
        f"validations, {len(r.records)} in all)"
        for r in runs
    )
    rel = [p.relative_to(out).as_posix() for p in plots]
    md = [
        "# Run comparison",
        "",
        sources,
        "",
        "Metrics of each run's last sampled validation (`n/a`: undefined, `–`: not computed for that run).",
        "",
        markdown_table(runs),
        "",
        "## Plots",
        "",
    ]
    md += [f"![{Path(p).stem}]({p})" for p in rel]
    md_path = out / "report.md"
    write_text_atomic(md_path, "\n".join(md) + "\n")

    figures = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(Path(p).stem)}"></figure>\n' for p in rel)
    run_figs = "".join(
        f"<h3>{html.escape(run.label)}</h3>\n"
        + "".join(
            f'<img class="small" src="{html.escape(p.relative_to(out).as_posix())}" alt="{html.escape(p.stem)}">'
            for p in paths
        )
        + "\n"
        for run, paths in per_run
    )
    src_html = "".join(
        f"<li><b>{html.escape(r.label)}</b>: <code>{html.escape(str(r.directory))}</code> "
        f"({html.escape(str(r.last.get('model', '?')))}, {len(r.sampled)} sampled validations)</li>"
        for r in runs
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 10px; }}
td:not(:first-child) {{ text-align: right; font-variant-numeric: tabular-nums; }}
th {{ background: #f2f2f2; }}
img {{ max-width: 100%; }} img.small {{ max-width: 32%; margin-right: 1%; }}
</style></head><body>
<h1>Run comparison</h1>
<ul>{src_html}</ul>
<p>Metrics of each run's last sampled validation (n/a: undefined, –: not computed for that run).</p>
{html_table(runs)}
<h2>Plots</h2>
{figures}<h2>Each run against its reference</h2>
{run_figs}</body></html>
"""
    html_path = out / "report.html"
    write_text_atomic(html_path, page)
    return {"markdown": md_path, "html": html_path, "plots": plots + [p for _, paths in per_run for p in paths]}


def run_compare(args: argparse.Namespace) -> int:
    directories = [Path(d) for d in args.runs]
    labels = list(args.labels) if getattr(args, "labels", None) else _default_labels(directories)
    if len(labels) != len(directories):
        raise GcdError(f"--labels: {len(labels)} labels for {len(directories)} run directories")
    runs = [read_run(d, label) for d, label in zip(directories, labels, strict=True)]
    written = write_report(runs, Path(args.out))
    print(f"wrote {written['markdown']}, {written['html']} and {len(written['plots'])} plots")
    return 0
