"""Images in, tensors out: what the pipelines accept as `image`, `mask_image` and `images`."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor
# PIL modes read as 8-bit values (mode "1" is converted to "L" first: white is 255, not 1).
_EIGHT_BIT_MODES = ("L", "RGB", "RGBA", "LA", "P")


def _pil_to_array(image: PIL.Image.Image, argument: str) -> np.ndarray:
    if image.mode == "1":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode not in _EIGHT_BIT_MODES:
        raise ValueError(
            f"`{argument}` is a PIL image in mode {image.mode!r}; pass 8-bit images (modes "
            f"{', '.join(_EIGHT_BIT_MODES)} or '1'), or an array / tensor with values in [0, 1]."
        )
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def images_to_tensor(images: ImageInput, argument: str = "image") -> torch.Tensor:
    """A PIL image, a list of them, an array of shape `(batch, height, width, channels)` (or one `(height, width,
    channels)` image) or a tensor of shape `(batch, channels, height, width)` (or `(channels, height, width)`),
    values in [0, 1], as a float32 tensor of shape `(batch, channels, height, width)`. Anything else, an empty batch
    or values outside [0, 1] raise a `ValueError` naming `argument`."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, list) and images and all(isinstance(image, PIL.Image.Image) for image in images):
        arrays = [_pil_to_array(image, argument) for image in images]
        if len({array.shape for array in arrays}) != 1:
            raise ValueError(f"The images of `{argument}` must all have one size and mode.")
        images = np.stack(arrays)
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"`{argument}` must be a PIL image, a non-empty list of them, an array of shape (batch, height, width, "
            "channels) or a tensor of shape (batch, channels, height, width)."
        )
    if images.is_complex() or images.dtype == torch.bool:
        raise ValueError(f"`{argument}` must hold real values in [0, 1]; got {images.dtype}.")
    images = images.float()
    if not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
        raise ValueError(
            f"`{argument}` must hold values in [0, 1]; got the range [{float(images.min())}, {float(images.max())}]."
        )
    return images
