"""The spectra application: structures from a target spectrum (amorphous carbon and its C K-edge XANES).

It attaches to the core by composition, and the core imports nothing of it:

* ``SpectrumModel`` (``forward_model``): the per-atom spectrum predictor (network ``net.SpectrumNet``), trained
  with ``gcd fit``;
* ``SpectrumGuidance`` (``guidance``): diffusion posterior sampling toward a target spectrum, a
  ``PosteriorGuidance`` passed to a diffusion model's ``sample``/``generate``;
* ``SpectrumL2`` (``metric``): ``val/spectrum_l2`` of a spectrum-conditioned model, a trainer callback;
* ``target``: a spectrum file on the model's energy grid and what ``gcd sample``'s spectrum options resolve to;
* ``density_scan``: the mass density of a target spectrum (``gcd sample --density auto``).
"""

from lightning_gcd.spectra.density_scan import DensityScan, run_density_scan, scan_density, training_density_range
from lightning_gcd.spectra.forward_model import SpectrumModel
from lightning_gcd.spectra.guidance import SpectrumGuidance
from lightning_gcd.spectra.metric import SpectrumL2
from lightning_gcd.spectra.target import SpectrumInputs, read_spectrum, spectrum_inputs

__all__ = [
    "DensityScan",
    "SpectrumGuidance",
    "SpectrumInputs",
    "SpectrumL2",
    "SpectrumModel",
    "read_spectrum",
    "run_density_scan",
    "scan_density",
    "spectrum_inputs",
    "training_density_range",
]
