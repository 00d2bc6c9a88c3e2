"""Sample grids for the CLI and the training scripts (PIL only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import PIL.Image

# Grids are upscaled (nearest) to at least this width so small images stay visible, with this many gray pixels
# between images.
GRID_MIN_WIDTH = 256
GRID_GUTTER = 2


def image_grid(
    images: Sequence[PIL.Image.Image],
    columns: int | None = None,
    min_width: int = GRID_MIN_WIDTH,
    gutter: int = GRID_GUTTER,
) -> PIL.Image.Image:
    """`images` (all one size) row by row, `columns` wide (near-square by default), on a gray background.

    Each image is upscaled by the smallest whole factor (nearest neighbour) that makes the grid at least `min_width`
    pixels wide, and images are `gutter` pixels apart and from the border. Empty cells stay black.
    """
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    scale = max(1, math.ceil(min_width / (columns * width)))
    tile_width, tile_height = width * scale, height * scale
    grid = PIL.Image.new(
        images[0].mode, (columns * (tile_width + gutter) + gutter, rows * (tile_height + gutter) + gutter), "gray"
    )
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        tile = images[index] if index < len(images) else PIL.Image.new(images[0].mode, (width, height))
        if scale > 1:
            tile = tile.resize((tile_width, tile_height), PIL.Image.Resampling.NEAREST)
        grid.paste(tile, (gutter + column * (tile_width + gutter), gutter + row * (tile_height + gutter)))
    return grid
