from lightning_gcd.nets.mpnn import PeriodicMPNN  # noqa: F401
from lightning_gcd.nets.unet3d import PeriodicUNet3d  # noqa: F401
