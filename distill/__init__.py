"""distill: knowledge-distillation pipelines for image classification (teacher -> soft-label cache -> student).

Importing it registers the CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) in timm's registry, so that
`timm.create_model("local-dir:<export folder>", pretrained=True)` finds them."""

from distill import cifar_resnet  # noqa: F401, E402

__version__ = "0.1.0"
