"""Summary of a dataset file for ``gcd data inspect``: counts, species, cells, splits, properties, caches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_masses, chemical_symbols

from datamodules.h5format import AtomsH5

_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


def _range(values: np.ndarray) -> dict[str, float]:
    return {"min": float(np.min(values)), "max": float(np.max(values)), "mean": float(np.mean(values))}


def summarize(path: str | Path) -> dict[str, Any]:
    """Everything ``gcd data inspect`` reports, as a JSON-ready dict."""
    with AtomsH5(path) as data:
        cells = data.cells
        lengths = np.linalg.norm(cells, axis=2)  # (S, 3)
        cos = lambda u, v: np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))  # noqa: E731
        angles = np.degrees(
            np.arccos(
                np.stack(
                    [cos(cells[:, 1], cells[:, 2]), cos(cells[:, 0], cells[:, 2]), cos(cells[:, 0], cells[:, 1])],
                    axis=1,
                )
            )
        )
        volumes = np.abs(np.linalg.det(cells))
        numbers = data._h5["structures/numbers"][()].astype(np.int64)
        masses = np.add.reduceat(atomic_masses[numbers], data.offset)
        density = masses / volumes * _AMU_PER_A3_TO_G_PER_CM3
        species_counts = Counter(numbers.tolist())
        properties = {}
        for name in data.property_names:
            ds = data.require_property(name)
            entry: dict[str, Any] = {"shape": list(ds.shape), "dtype": str(ds.dtype)}
            if ds.dtype.kind in "biuf":
                values = ds[()]
                entry.update({"min": float(np.min(values)), "max": float(np.max(values))})
            properties[name] = entry
        atom_properties = {
            name: {
                "shape": list(data._h5[f"atom_properties/{name}"].shape),
                "dtype": str(data._h5[f"atom_properties/{name}"].dtype),
            }
            for name in data.atom_property_names
        }
        voxels = {}
        for name in data.voxel_names:
            ds = data.voxel_cache(name)
            voxels[name] = {
                "shape": list(ds.shape),
                "channels": [str(c) for c in ds.attrs["channels"]],
                "spacing_A": [round(float(s), 4) for s in np.atleast_1d(ds.attrs["spacing"])],
            }
        return {
            "path": str(path),
            "description": data.description,
            "structures": len(data),
            "atoms": int(data.n_atoms.sum()),
            "species": {chemical_symbols[z]: int(species_counts[z]) for z in data.species},
            "atoms_per_structure": _range(data.n_atoms),
            "atom_count_histogram": {str(k): int(v) for k, v in sorted(Counter(data.n_atoms.tolist()).items())},
            "cell_lengths_A": {"a": _range(lengths[:, 0]), "b": _range(lengths[:, 1]), "c": _range(lengths[:, 2])},
            "cell_angles_deg": {
                "alpha": _range(angles[:, 0]),
                "beta": _range(angles[:, 1]),
                "gamma": _range(angles[:, 2]),
            },
            "volume_A3": _range(volumes),
            "density_g_cm3": _range(density),
            "labels": dict(Counter(data.labels).most_common(20)),
            "splits": {name: int(len(data.split(name))) for name in data.split_names},
            "properties": properties,
            "atom_properties": atom_properties,
            "voxels": voxels,
        }


def format_summary(summary: dict[str, Any], bar_width: int = 40) -> str:
    """Human-readable text of ``summarize``'s dict, with a text histogram of atom counts."""
    r = lambda d, unit="": f"{d['min']:.3g}–{d['max']:.3g}{unit} (mean {d['mean']:.3g})"  # noqa: E731
    lines = [
        f"{summary['path']}",
        f"  {summary['description']}" if summary["description"] else "",
        f"  structures: {summary['structures']}   atoms: {summary['atoms']}",
        "  species: " + ", ".join(f"{s} ({n} atoms)" for s, n in summary["species"].items()),
        f"  atoms per structure: {r(summary['atoms_per_structure'])}",
        "  cell lengths: " + "  ".join(f"{k} {r(v, ' Å')}" for k, v in summary["cell_lengths_A"].items()),
        "  cell angles: " + "  ".join(f"{k} {r(v, '°')}" for k, v in summary["cell_angles_deg"].items()),
        f"  volume: {r(summary['volume_A3'], ' Å³')}   density: {r(summary['density_g_cm3'], ' g/cm³')}",
        "  atom-count histogram:",
    ]
    hist = summary["atom_count_histogram"]
    top = max(hist.values())
    for n, count in hist.items():
        lines.append(f"    {n:>6} | {'#' * max(1, round(bar_width * count / top)):<{bar_width}} {count}")
    lines.append("  labels: " + ", ".join(f"{k} ({v})" for k, v in summary["labels"].items()))
    lines.append("  splits: " + (", ".join(f"{k} {v}" for k, v in summary["splits"].items()) or "none"))
    for title, table in (("properties", summary["properties"]), ("atom properties", summary["atom_properties"])):
        lines.append(f"  {title}: " + ("none" if not table else ""))
        for name, entry in table.items():
            extra = f" range {entry['min']:.4g}..{entry['max']:.4g}" if "min" in entry else ""
            lines.append(f"    {name}: {tuple(entry['shape'])} {entry['dtype']}{extra}")
    lines.append("  voxel caches: " + ("none" if not summary["voxels"] else ""))
    for name, entry in summary["voxels"].items():
        lines.append(
            f"    {name}: {tuple(entry['shape'])} spacing {entry['spacing_A']} Å channels "
            f"{', '.join(entry['channels'])}"
        )
    return "\n".join(line for line in lines if line)
