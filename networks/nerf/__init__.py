"""The head field and its renderer: grid-encoded NeRF conditioned on landmark windows, ray-marched with the
cuda_ext ops, composited over the background and super-resolved 2x. Plain nn.Modules (no Lightning, no config)."""

from networks.nerf.condition import ConditionEncoder
from networks.nerf.head_field import HeadField
from networks.nerf.latent import FrameCodes, per_frame_code
from networks.nerf.renderer import VolumeRenderer
from networks.nerf.super_resolution import SuperResolution

__all__ = ["ConditionEncoder", "FrameCodes", "HeadField", "SuperResolution", "VolumeRenderer", "per_frame_code"]
