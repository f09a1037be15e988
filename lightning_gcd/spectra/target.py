"""What a spectrum target is on the command line: a spectrum file on the model's energy grid, and the condition,
target and posterior guidance that ``gcd sample --spectrum/--condition-from/--forward-ckpt/--dps-scale`` ask for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.models.checkpoint import model_from_checkpoint
from lightning_gcd.sampling import condition_from
from lightning_gcd.spectra.forward_model import SpectrumModel
from lightning_gcd.spectra.guidance import SpectrumGuidance

__all__ = ["SpectrumInputs", "read_spectrum", "spectrum_inputs"]


def read_spectrum(path: str | Path, energy: Sequence[float] | None) -> torch.Tensor:
    """A spectrum file on the model's energy grid ``energy`` (eV), as a (K,) float32 tensor.

    Accepted: a text file (whitespace or comma separated, ``#`` comments) or a ``.npy`` array with two
    columns, energy (eV, monotonic) and intensity, linearly interpolated onto the grid, which the file's
    energies must cover (to half a grid step); or, as ``.npy`` or one text column, exactly K values on the grid.
    Any other input raises a one-line ``GcdError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GcdError(f"{path}: no such spectrum file")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            with open(path) as handle:
                text = handle.read().replace(",", " ")
            rows = [line.split("#", 1)[0].split() for line in text.splitlines()]
            rows = [r for r in rows if r]
            if not rows or len({len(r) for r in rows}) != 1:
                raise ValueError("expected one or two columns of numbers on every line")
            values = np.asarray(rows, dtype=np.float64)
    except (ValueError, OSError) as exc:
        raise GcdError(
            f"{path}: not a spectrum file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if not np.all(np.isfinite(values)):
        raise GcdError(f"{path}: the spectrum has non-finite values")
    if values.ndim == 1:
        if energy is None or len(values) != len(energy):
            expected = (
                f"{len(energy)} values on the grid {energy[0]:g}–{energy[-1]:g} eV"
                if energy
                else "energy/intensity columns"
            )
            raise GcdError(f"{path}: {len(values)} values without energies; the model expects {expected}")
        return torch.as_tensor(values, dtype=torch.float32)
    if values.ndim != 2 or values.shape[1] != 2 or len(values) < 2:
        raise GcdError(
            f"{path}: expected two columns (energy eV, intensity) and at least 2 rows, got shape {values.shape}"
        )
    e, mu = values[:, 0], values[:, 1]
    if np.all(np.diff(e) < 0):
        e, mu = e[::-1], mu[::-1]
    if not np.all(np.diff(e) > 0):
        raise GcdError(f"{path}: the energies (first column) must be strictly monotonic")
    if energy is None:
        raise GcdError(
            f"{path}: the checkpoint stores no energy grid; give the spectrum as its K values on the model's grid "
            f"(.npy)"
        )
    grid = np.asarray(energy, dtype=np.float64)
    half = 0.5 * float(np.min(np.diff(grid))) if len(grid) > 1 else 0.0
    if e[0] > grid[0] + half or e[-1] < grid[-1] - half:
        raise GcdError(
            f"{path}: the spectrum covers {e[0]:g}–{e[-1]:g} eV, the model's grid needs {grid[0]:g}–{grid[-1]:g} eV"
        )
    return torch.as_tensor(np.interp(grid, e, mu), dtype=torch.float32)


@dataclass
class SpectrumInputs:
    """What the spectrum options resolve to.

    cond: the diffusion model's condition (K,) or None; target: the forward model's target spectrum (K,) or
    None; posterior: the ``SpectrumGuidance`` of posterior sampling or None; forward: the forward model or None
    (it serves posterior sampling and the density scan, which may use it without posterior sampling).
    """

    cond: torch.Tensor | None = None
    target: torch.Tensor | None = None
    posterior: SpectrumGuidance | None = None
    forward: SpectrumModel | None = None


def model_energy_grid(info: dict[str, Any]) -> list[float] | None:
    """The energy grid (eV) of a spectrum-conditioned model's condition (``spectrum_energy`` before #29)."""
    return info.get("condition_grid") or info.get("spectrum_energy")


def load_forward_model(path: str | Path, device: str | torch.device, model_info: dict[str, Any]) -> SpectrumModel:
    """The ``SpectrumModel`` of ``path`` in float32, refused in one line when its grid is not the model's."""
    forward = model_from_checkpoint(path, SpectrumModel, device).float()
    own, energy = model_energy_grid(model_info), forward.info.get("energy")
    if own and energy and not np.allclose(own, energy):
        raise GcdError(f"{path}: its energy grid differs from the diffusion model's")
    return forward


def spectrum_inputs(
    model: Any,
    *,
    spectrum: str | None = None,
    condition_from_spec: str | None = None,
    forward_ckpt: str | None = None,
    dps_scale: float | None = None,
    density_auto: bool = False,
    device: str | torch.device = "cpu",
) -> SpectrumInputs:
    """Resolve ``--spectrum FILE`` / ``--condition-from DATASET:INDEX``, ``--forward-ckpt`` and ``--dps-scale``
    against ``model`` (a diffusion model; its condition, if any, is the spectrum) into ``SpectrumInputs``.
    ``density_auto``: the forward model is wanted for ``--density auto`` even without ``--dps-scale``."""
    info = model.info
    cond_dim = int(info.get("cond_dim", 0))
    if spectrum and condition_from_spec:
        raise GcdError("give either --spectrum or --condition-from, not both")
    forward = None
    if forward_ckpt:
        if dps_scale is None and not density_auto:
            raise GcdError(
                "--forward-ckpt needs --dps-scale RHO (the size of the posterior-sampling step) or --density auto"
            )
        forward = load_forward_model(forward_ckpt, device, info)
    elif dps_scale is not None:
        raise GcdError("--dps-scale needs --forward-ckpt (the spectrum forward model)")
    grid = model_energy_grid(info) or (forward.info.get("energy") if forward is not None else None)

    out = SpectrumInputs(forward=forward)
    if spectrum:
        values = read_spectrum(spectrum, grid)
        if cond_dim:
            if values.numel() != cond_dim:
                raise GcdError(
                    f"{spectrum}: {values.numel()} values; the model's condition "
                    f"({', '.join(info.get('conditions', []))}) has {cond_dim}"
                )
            out.cond = values
        if forward is not None:
            out.target = values
        if not cond_dim and forward is None:
            raise GcdError("--spectrum needs a spectrum-conditioned model or a forward model (--forward-ckpt)")
    elif condition_from_spec:
        if cond_dim:
            out.cond = condition_from(condition_from_spec, info.get("conditions", []))
            if out.cond.numel() != cond_dim:
                raise GcdError(f"the condition has {out.cond.numel()} values, the model expects {cond_dim}")
        if forward is not None:
            out.target = condition_from(condition_from_spec, [forward.hparams.spectrum])
    elif forward is not None:
        raise GcdError("--forward-ckpt needs a target: --spectrum FILE or --condition-from DATASET:INDEX")
    if out.target is not None and out.target.numel() != int(forward.info["n_out"]):
        raise GcdError(
            f"the target spectrum has {out.target.numel()} values, the forward model predicts {forward.info['n_out']}"
        )
    if forward is not None and dps_scale is not None:
        out.posterior = SpectrumGuidance(forward, dps_scale)
    return out
