"""Structure metrics shared by every model: torchmetrics whose states are sums, histograms (and one
minimum), so they are exact under DDP. Each ``update`` takes a ``StructureBatch`` (or ``Atoms``)."""

from lightning_gcd.metrics.coordination import (
    CARBON_CUTOFF,
    CoordinationHistogram,
    coordination_numbers,
    cutoff_from_rdf_minimum,
    sp_fractions,
)
from lightning_gcd.metrics.counts import AtomCount, MinDistanceViolations
from lightning_gcd.metrics.phase_match import PhaseMatch, ideal_for_dataset, local_structure_types, phase_matches
from lightning_gcd.metrics.rdf import RadialDistribution, rdf_l1, structure_rdf
from lightning_gcd.metrics.suite import StructureMetrics

__all__ = [
    "AtomCount",
    "CARBON_CUTOFF",
    "CoordinationHistogram",
    "MinDistanceViolations",
    "PhaseMatch",
    "RadialDistribution",
    "StructureMetrics",
    "coordination_numbers",
    "cutoff_from_rdf_minimum",
    "ideal_for_dataset",
    "local_structure_types",
    "phase_matches",
    "rdf_l1",
    "sp_fractions",
    "structure_rdf",
]
