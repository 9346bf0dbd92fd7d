"""predict's reading of pictures and arrays: what a Fashion-MNIST image is made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_tuning.deploy.images import read_images
from fmnist_tuning.errors import DataError


def _garment() -> np.ndarray:
    """A 28 x 28 light 'garment' (a bright block) on black, as Fashion-MNIST draws them."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[2:26, 8:20] = 200
    return image


def test_a_28_by_28_png_is_read_as_it_is(tmp_path: Path) -> None:
    Image.fromarray(_garment()).save(tmp_path / "g.png")
    assert np.array_equal(read_images(tmp_path / "g.png")[0], _garment())


def test_a_dark_garment_on_a_light_photo_of_another_size_becomes_light_on_black(
    tmp_path: Path,
) -> None:
    canvas = np.full((300, 500), 230, dtype=np.uint8)  # grey-white table, wider than tall
    canvas[25:265, 190:310] = 20  # the dark garment, 240 x 120
    Image.fromarray(canvas).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    image = read_images(tmp_path / "photo.jpg")[0]
    assert image.shape == (28, 28)
    # Trimmed to the garment, its height (the longest side) made 28: a 28 x 14 light block in
    # the middle, black on both sides.
    assert image[:, :6].max() < 40 and image[:, 22:].max() < 40
    assert image[1:27, 8:20].min() > 200


def test_a_transparent_background_counts_as_white(tmp_path: Path) -> None:
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[4:52, 16:40] = (30, 30, 30, 255)  # an opaque dark garment
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    image = read_images(tmp_path / "cutout.png")[0]
    assert image[14, 14] > 200 and image[14, 0] < 20  # inverted: light garment, black around


def test_a_picture_of_an_extreme_shape_is_scaled_into_28_by_28(tmp_path: Path) -> None:
    Image.fromarray(np.full((1, 20_000), 255, dtype=np.uint8)).save(tmp_path / "line.png")
    assert read_images(tmp_path / "line.png").shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("shape", "dtype", "scale"),
    [((28, 28), np.uint8, 1), ((3, 28, 28), np.float32, 1 / 255), ((2, 784), np.int64, 1)],
)
def test_npy_arrays_of_one_or_many_images(
    tmp_path: Path, shape: tuple[int, ...], dtype: type, scale: float
) -> None:
    pixels = np.arange(np.prod(shape)).reshape(shape) % 256
    np.save(tmp_path / "a.npy", (pixels * scale).astype(dtype))
    images = read_images(tmp_path / "a.npy")
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert np.array_equal(images.reshape(-1), pixels.reshape(-1).astype(np.uint8))


def test_an_npz_archive_under_an_npy_name_is_refused_in_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((28, 28), dtype=np.uint8))
    (tmp_path / "a.npz").rename(tmp_path / "a.npy")
    with pytest.raises(DataError, match="npz archive") as err:
        read_images(tmp_path / "a.npy")
    assert "\n" not in str(err.value)
