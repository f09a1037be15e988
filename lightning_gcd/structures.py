"""Batched periodic structures as tensors, and their conversion to and from ASE ``Atoms``.

A batch holds ``B`` structures padded to ``N`` atoms each. Units: Å. Cells are 3×3 matrices whose
rows are the lattice vectors, so Cartesian positions are ``frac_coords @ cell``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms


@dataclass
class StructureBatch:
    """``B`` periodic structures padded to ``N`` atoms.

    Attributes:
        frac_coords: (B, N, 3) fractional coordinates in [0, 1); padding rows are 0.
        numbers: (B, N) int64 atomic numbers; padding is 0.
        mask: (B, N) bool, True for real atoms.
        cell: (B, 3, 3) Å, rows are lattice vectors.
    """

    frac_coords: torch.Tensor
    numbers: torch.Tensor
    mask: torch.Tensor
    cell: torch.Tensor

    @property
    def n_atoms(self) -> torch.Tensor:
        """(B,) int64 number of real atoms per structure."""
        return self.mask.sum(dim=1)

    @property
    def positions(self) -> torch.Tensor:
        """(B, N, 3) Cartesian positions in Å."""
        return torch.einsum("bni,bij->bnj", self.frac_coords, self.cell)

    def to(self, device: torch.device | str) -> StructureBatch:
        return StructureBatch(
            self.frac_coords.to(device), self.numbers.to(device), self.mask.to(device), self.cell.to(device)
        )

    def __len__(self) -> int:
        return self.frac_coords.shape[0]

    @classmethod
    def from_atoms(
        cls, atoms_list: Sequence[Atoms], n_max: int | None = None, dtype: torch.dtype = torch.float32
    ) -> StructureBatch:
        """Pad a list of ASE structures into one batch; fractional coordinates are wrapped to [0, 1)."""
        if len(atoms_list) == 0:
            raise ValueError("cannot build a StructureBatch from an empty list of structures")
        n_max = n_max or max(len(a) for a in atoms_list)
        b = len(atoms_list)
        frac = torch.zeros(b, n_max, 3, dtype=dtype)
        numbers = torch.zeros(b, n_max, dtype=torch.long)
        mask = torch.zeros(b, n_max, dtype=torch.bool)
        cell = torch.zeros(b, 3, 3, dtype=dtype)
        for i, atoms in enumerate(atoms_list):
            n = len(atoms)
            if n > n_max:
                raise ValueError(f"structure {i} has {n} atoms, more than n_max={n_max}")
            frac[i, :n] = torch.as_tensor(wrap_frac(atoms.get_scaled_positions(wrap=False)), dtype=dtype)
            numbers[i, :n] = torch.as_tensor(atoms.numbers, dtype=torch.long)
            mask[i, :n] = True
            cell[i] = torch.as_tensor(np.asarray(atoms.cell[:]), dtype=dtype)
        return cls(frac, numbers, mask, cell)

    def to_atoms(self) -> list[Atoms]:
        """One periodic ASE ``Atoms`` per structure, padding removed."""
        out = []
        frac = self.frac_coords.detach().double().cpu().numpy()
        numbers = self.numbers.detach().cpu().numpy()
        mask = self.mask.detach().cpu().numpy()
        cell = self.cell.detach().double().cpu().numpy()
        for i in range(len(self)):
            m = mask[i]
            out.append(Atoms(numbers=numbers[i][m], scaled_positions=frac[i][m], cell=cell[i], pbc=True))
        return out


def wrap_frac(frac_coords: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1), guarding against 1.0 produced by rounding."""
    wrapped = np.mod(frac_coords, 1.0)
    wrapped[wrapped >= 1.0] = 0.0
    return wrapped


def wrap_unit(frac: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates wrapped into [0, 1) (1.0 from rounding goes to 0); the tensor form of ``wrap_frac``."""
    wrapped = torch.remainder(frac, 1.0)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)


G_PER_CM3_IN_AMU_PER_A3 = 0.602214076  # 1 g/cm³ = N_A · 1e-24 u/Å³


def mass_density(atoms: Atoms) -> float:
    """Mass density of a periodic structure in g/cm³."""
    return float(atoms.get_masses().sum() / atoms.get_volume() / G_PER_CM3_IN_AMU_PER_A3)


def cubic_cell(n_atoms: int, mass_density: float, composition: dict[int, float]) -> np.ndarray:
    """(3, 3) Å cubic cell that holds ``n_atoms`` atoms of ``composition`` (atomic number -> fraction of
    atoms) at ``mass_density`` g/cm³: edge = (n · mean molar mass / (ρ · N_A))^(1/3)."""
    from ase.data import atomic_masses

    if n_atoms < 1:
        raise ValueError(f"n_atoms must be at least 1, got {n_atoms}")
    if not mass_density > 0:
        raise ValueError(f"the mass density must be positive (g/cm³), got {mass_density}")
    total = sum(composition.values())
    if not composition or total <= 0:
        raise ValueError("the composition needs at least one species with a positive fraction")
    molar_mass = sum(float(atomic_masses[int(z)]) * f / total for z, f in composition.items())  # g/mol per atom
    volume = n_atoms * molar_mass / (mass_density * G_PER_CM3_IN_AMU_PER_A3)  # Å^3
    return np.eye(3) * volume ** (1.0 / 3.0)
