"""Picture files → uint8 ``N x 28 x 28`` arrays as Fashion-MNIST holds its images.

- **PNG and JPEG** (any size, colour or grey; turned upright by their EXIF orientation, and a
  transparent background made white): converted to grey. Fashion-MNIST shows light
  garments on a black background, so **a picture whose border is light (mean grey of its outermost
  pixels above 127) is inverted**: a photo on a white background becomes a light garment on black.
  The background's grey (the border's median) is then stretched to black. A picture of another
  size than 28 x 28 is made as Fashion-MNIST's were: trimmed to the garment (the pixels above 32),
  its longest side resized to 28 (Lanczos), centred on black. One picture is one image.
- **``.npy``**: one image (28 x 28 or 784 values) or a batch (N x 28 x 28 or N x 784), uint8
  pixels 0-255, or floats in [0, 1]; used as they are (no inversion).
- **IDX** (``*-idx3-ubyte``, also ``.gz``): a file of the dataset's own format; every image in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmnist_tuning.errors import DataError, first_line
from fmnist_tuning.final.classifier import as_pixels
from fmnist_tuning.training.raw import IMAGE_SIDE, N_FEATURES, read_idx

PICTURES = (".png", ".jpg", ".jpeg")
LIGHT_BORDER = 127  # a border brighter than this (mean grey, 0-255) is a light background: inverted
MAX_SIDE = 1024  # a longer trimmed side is shrunk to this first (memory), before the square
TRIM = 32  # pixels brighter than this, once the background is black, are the garment (trim)
KINDS = "PNG, JPEG, .npy or an IDX images file"


def read_images(path: Path) -> np.ndarray:
    """The images in the file ``path``, uint8, ``N x 28 x 28``.

    Raises:
        DataError: No such file, an unknown kind, a corrupt one, or arrays of another shape.
    """
    if not path.is_file():
        raise DataError(f"no file at {path}; pass the path of a {KINDS}")
    name = path.name.lower()
    if name.endswith(PICTURES):
        return picture(path)[None]
    if name.endswith(".npy"):
        return _array(path)
    if "idx" in name or name.endswith("ubyte"):
        fix = "pass an intact IDX images file (such as t10k-images-idx3-ubyte.gz)"
        return read_idx(path, 3, fix).numpy().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    raise DataError(f"{path}: cannot read a {path.suffix or 'suffix-less'} file; pass a {KINDS}")


def picture(path: Path) -> np.ndarray:
    """A PNG or JPEG as one 28 x 28 uint8 image (see the module docstring for the rule)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            upright = ImageOps.exif_transpose(opened)  # a phone's portrait photo stands up
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                white = Image.new("RGBA", upright.size, (255, 255, 255, 255))
                upright = Image.alpha_composite(white, upright.convert("RGBA"))
            pixels = np.asarray(upright.convert("L"), dtype=np.uint8)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,  # Pillow's "broken PNG file"
        EOFError,
    ) as err:
        raise DataError(
            f"{path} is not a readable PNG or JPEG ({first_line(err, 120)}); pass an intact picture"
        ) from None
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > LIGHT_BORDER:
        pixels = 255 - pixels
        border = 255 - border
    # The background black, as in Fashion-MNIST: its grey (the border's median) becomes 0.
    background = int(np.median(border))
    if background:
        stretched = (pixels.astype(np.float32) - background) * 255 / (255 - background)
        pixels = np.clip(np.rint(stretched), 0, 255).astype(np.uint8)
    if pixels.shape == (IMAGE_SIDE, IMAGE_SIDE):
        return pixels
    # As Fashion-MNIST was made: trimmed to the garment, its longest side resized to 28, centred.
    rows, cols = np.nonzero(pixels > TRIM)
    if len(rows):
        pixels = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    if max(pixels.shape) > MAX_SIDE:  # a huge or extreme picture: its square would not fit
        scale = MAX_SIDE / max(pixels.shape)
        height, width = (max(1, round(n * scale)) for n in pixels.shape)
        shrunk = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)
        pixels = np.asarray(shrunk, dtype=np.uint8)
    side = max(pixels.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - pixels.shape[0]) // 2, (side - pixels.shape[1]) // 2
    square[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    resized = Image.fromarray(square).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def _array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path} is not a readable .npy array ({first_line(err, 120)}); save one with "
            "numpy.save"
        ) from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive under another name
        loaded.close()
        raise DataError(f"{path} is an .npz archive, not one array; save one with numpy.save")
    array: np.ndarray = loaded
    if array.shape in ((IMAGE_SIDE, IMAGE_SIDE), (N_FEATURES,)):
        array = array.reshape(1, N_FEATURES)  # one image
    integers = array.dtype.kind in "iu"
    if array.dtype.kind not in "iuf" or (
        integers and array.size and not 0 <= array.min() <= array.max() <= 255
    ):
        raise DataError(
            f"{path} holds {array.dtype} values that are not pixels 0-255; save uint8 pixels or "
            "floats in [0, 1]"
        )
    if integers:
        array = array.astype(np.uint8, copy=False)  # 0-255, checked
    try:  # the arrays a loaded model classifies: N x 28 x 28 or N x 784, 0-255 or floats in [0, 1]
        pixels = as_pixels(array)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    return pixels.round().to(torch.uint8).numpy().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
