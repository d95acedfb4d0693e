"""The embedded sample subject: a synthetic talking head (scikit-image's astronaut lifted to a 3D face mesh,
driven by visemes of a synthesised phone timeline) written as an mp4 with exact ground truth beside it.

    python -m datamodules.sample out=<dir> seed=0 duration=60 size=512 fps=25

See `generator.py` for the output layout and `ground_truth.json` (written with every sample) for each array.
"""

from .generator import GENERATOR_VERSION, generate_sample, sample_is_complete

__all__ = ["generate_sample", "sample_is_complete", "GENERATOR_VERSION"]
