"""The device renderer's JPEG decoder (distill/data/jpeg.py), each backend against libjpeg-turbo as PIL runs it."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_jpegs
from distill.data import jpeg


def _pil(file: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(file)) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("backend", jpeg.BACKENDS)
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision's, expected
def test_each_decoder_gives_libjpeg_turbos_very_pixels_on_the_cpu(backend):
    if backend not in jpeg.available():
        pytest.skip(f"{backend} is not installed here")
    files = photo_jpegs(8)  # colour and grey, baseline and progressive, odd sizes
    got = jpeg.decode([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files], "cpu", backend)
    for i, (image, file) in enumerate(zip(got, files)):
        want = _pil(file)
        assert image.dtype == torch.uint8 and image.shape == want.shape, i
        assert torch.equal(image, want), (i, (image.int() - want.int()).abs().max().item())


def test_an_unavailable_decoder_is_named():
    with pytest.raises(ValueError, match="'nvimagecodec' is not available here"):
        jpeg.decode([], "cpu", "nvimagecodec")
