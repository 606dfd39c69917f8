"""data.source=demo: scikit-learn's 8x8 handwritten digits (1,797 real scans, shipped inside the package: no
download), the data of a run given no data.path."""
from __future__ import annotations

import datasets
import numpy as np

from distill.config import DataCfg
from distill.data.sources import Source
from distill.registry import SOURCES


def demo_dataset() -> datasets.Dataset:
    """The digits as one split: a grayscale image column and a ClassLabel of the ten digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features)


@SOURCES.register("demo", help="the built-in digits (scikit-learn's 8x8 scans; no data.path)")
class Demo(Source):
    rank = 0

    def detects(self, path: str | None) -> bool:
        """No data.path given: the demo digits."""
        return not path

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        return datasets.DatasetDict({"train": demo_dataset()})
