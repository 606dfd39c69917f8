"""JPEG decoding on a device, behind one function: TorchCodec where it is installed and loads, else torchvision.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec's (from 0.16). Both decode with libjpeg-turbo
on the CPU (PIL's decoder: the CPU path's very pixels) and with nvJPEG on CUDA, a whole batch in one call.
"""
from __future__ import annotations

import functools

import torch

BACKENDS = ("torchcodec", "torchvision")


@functools.cache
def available() -> tuple[str, ...]:
    """The backends that import here, in order of preference."""
    found = []
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
        found.append("torchcodec")
    except Exception:  # not installed, or built for another torch: its compiled ops fail to load (RuntimeError/OSError)
        pass
    return (*found, "torchvision")


def decode(files: list[torch.Tensor], device, backend: str | None = None) -> list[torch.Tensor]:
    """Decode JPEG files together on `device`.

    Args:
        files: each file's bytes as a 1-D uint8 tensor on the CPU.
        device: where to decode and where the images land ("cpu", "cuda", a torch.device).
        backend: "torchcodec" or "torchvision"; None takes the first of `available()`.
    Returns:
        one uint8 RGB tensor [3, H, W] per file, on `device`.
    Raises:
        ValueError for a backend that is not available here; the backend's own error for a file it cannot decode.
    """
    backend = backend or available()[0]
    if backend not in available():
        raise ValueError(f"JPEG decoder {backend!r} is not available here (available: {', '.join(available())})")
    if backend == "torchcodec":
        from torchcodec.decoders import decode_jpeg
        return decode_jpeg(list(files), mode="RGB", device=device)
    from torchvision.io import ImageReadMode, decode_jpeg
    return decode_jpeg(list(files), mode=ImageReadMode.RGB, device=device)
