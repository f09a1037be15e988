from lightning_gcd.diffusion.schedules import VPSchedule  # noqa: F401
from lightning_gcd.diffusion.ve import VEParticleDiffusion, n_atoms_for_cell  # noqa: F401
from lightning_gcd.diffusion.vp import GaussianDiffusion, classifier_free_guidance, respaced_timesteps  # noqa: F401
