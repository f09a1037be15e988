"""Sampler settings written as one word on a study's command line: ``ddpm-100+r2@0.3`` (a sampler, its steps
and the voxel model's restarts back to a fraction of the noise), ``voxel:ddim-50`` (which model, too)."""

from __future__ import annotations

import re

__all__ = ["RESTARTS_SUFFIX", "parse_variant", "split_restarts"]

RESTARTS_SUFFIX = re.compile(r"\+r(\d+)(?:@([0-9.]+))?$")


def split_restarts(spec: str) -> tuple[str, tuple[int, float] | None]:
    """``"ddpm-100+r2@0.3"`` -> ("ddpm-100", (2, 0.3)): 2 restarts back to 0.3 T (the voxel model's restart
    sampling); ``"ddpm-100+r0"`` -> ("ddpm-100", (0, 0.3)): none; without the suffix, None (the model's own)."""
    match = RESTARTS_SUFFIX.search(spec)
    if match is None:
        return spec, None
    restarts, level = int(match[1]), float(match[2]) if match[2] else 0.3
    if restarts and match[2] is None or not 0.0 < level < 1.0:
        raise SystemExit(f"{spec!r}: a restart suffix is +rN@T with T in (0, 1), e.g. +r2@0.3, or +r0 for none")
    return spec[: match.start()], (restarts, level)


def parse_variant(spec: str) -> tuple[str, str, int, tuple[int, float] | None]:
    """``"voxel:ddim-200"`` -> ("voxel", "ddim", 200, None); ``"voxel:ddpm-100+r0"`` -> (..., (0, 0.3))."""
    try:
        kind, rest = spec.split(":", 1)
        rest, restarts = split_restarts(rest)
        sampler, steps = rest.rsplit("-", 1)
        steps_i = int(steps)
    except ValueError:
        raise SystemExit(
            f"--extra-samplers takes MODEL:SAMPLER-STEPS[+rN@T] (e.g. voxel:ddpm-100+r0), got {spec!r}"
        ) from None
    valid = {"voxel": ("ddim", "ddpm", "dpm2m", "dpm2m-sde"), "particle": ("em", "pc")}
    if kind not in valid or sampler not in valid[kind] or steps_i < 1 or (restarts and kind != "voxel"):
        raise SystemExit(f"--extra-samplers: {spec!r} is not one of voxel:ddim|ddpm-N[+rN@T], particle:em|pc-N")
    return kind, sampler, steps_i, restarts
