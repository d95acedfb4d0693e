"""The `fit_image` data: a real photograph (scikit-image's astronaut), random pixel batches for training and
the whole image for validation."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.streams import StepStream, step_generator


def load_photo(name: str, size: int) -> np.ndarray:
    """A photograph shipped with scikit-image, resized to size x size: float32 [size, size, 3] in [0, 1]."""
    import cv2
    from skimage import data

    loaders = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}
    if name not in loaders:
        raise ValueError(f"data.image={name!r}: unknown photo; one of {sorted(loaders)}")
    img = loaders[name]()
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0


def pixel_coords(size: int) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1]: [size*size, 2] (x right, y down), row-major."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


class _WholeImage(Dataset):
    def __init__(self, xy: torch.Tensor, rgb: torch.Tensor):
        self.xy, self.rgb = xy, rgb

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return {"xy": self.xy, "rgb": self.rgb}


class ImageDataModule(LightningDataModule):
    """Train: endless step-indexed batches of `batch_size` random pixels. Val: the whole image."""

    def __init__(self, image: str = "astronaut", size: int = 128, batch_size: int = 4096, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.image, self.size, self.batch_size, self.seed, self.num_workers = image, size, batch_size, seed, num_workers
        self.rgb: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.rgb is None:
            self.rgb = torch.from_numpy(load_photo(self.image, self.size)).reshape(-1, 3)
            self.xy = pixel_coords(self.size)

    def _batch(self, _index: int, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.seed, step)
        idx = torch.randint(0, self.rgb.shape[0], (self.batch_size,), generator=g)
        return {"xy": self.xy[idx], "rgb": self.rgb[idx]}

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        stream = StepStream(1, self._batch, seed=self.seed, start=start)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_WholeImage(self.xy, self.rgb), batch_size=None)
