"""lightning_gcd: grand canonical voxel diffusion and particle diffusion for atomic structures."""

__version__ = "0.1.0"
