"""The offline default dataset: scikit-learn's bundled 8×8 handwritten digits, resized for image models.

The 1,797 digits ship inside scikit-learn, so training, tests and benchmarks run without a network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The digits' pixel values are integers 0…16.
_DIGITS_MAX_VALUE = 16.0
_NUM_DIGITS = 1797


def load_digits_images(
    resolution: int = 16, split: str = "all", test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits as 1-channel 8-bit images scaled to [−1, 1], and their labels.

    Args:
        resolution (`int`, defaults to 16): output height and width (bilinear resize from 8×8).
        split (`str`, defaults to `"all"`): `"all"`, `"train"` or `"test"`; the split is a fixed random permutation.
        test_fraction (`float`, defaults to 0.2): share of the digits in the `"test"` split.
        seed (`int`, defaults to 0): seed of the split's permutation.

    Returns:
        `(images, labels)`: float32 of shape `(n, 1, resolution, resolution)` in [−1, 1], int64 of shape `(n,)`.
    """
    from sklearn.datasets import load_digits

    if split not in ("all", "train", "test"):
        raise ValueError(f"`split` must be one of 'all', 'train', 'test'; got {split!r}.")
    if resolution < 1:
        raise ValueError(f"`resolution` must be >= 1; got {resolution}.")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / _DIGITS_MAX_VALUE
    labels = torch.tensor(digits.target, dtype=torch.int64)
    if resolution != images.shape[-1]:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    # Quantise to 8 bits so bits/dim on the 8-bit scale is well defined.
    images = torch.round(images.clamp(0, 1) * 255) / 255
    images = (images * 2 - 1).contiguous()
    if split != "all":
        order = torch.randperm(_NUM_DIGITS, generator=torch.Generator().manual_seed(seed))
        num_test = int(round(test_fraction * _NUM_DIGITS))
        chosen = order[:num_test] if split == "test" else order[num_test:]
        images, labels = images[chosen], labels[chosen]
    return images, labels
