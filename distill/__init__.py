"""distill: knowledge-distillation pipelines for image classification (teacher -> soft-label cache -> student).

Importing it registers the CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) in timm's registry, so that
`timm.create_model("local-dir:<export folder>", pretrained=True)` finds them: at once when timm is already imported,
otherwise right after timm is, so that `import distill` itself stays light (`--help` and config errors answer
before torch loads)."""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds no module itself: on timm's first import it wraps timm's loader so that distill.training.cifar_resnet
    registers the CIFAR ResNets right after timm has loaded. Written by hand: Python has no post-import hook."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # once; and so that the lookup below finds the real timm
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def load_then_register(module):
                load(module)
                importlib.import_module("distill.training.cifar_resnet")
            spec.loader.exec_module = load_then_register
        return spec


if "timm" in sys.modules:
    importlib.import_module("distill.training.cifar_resnet")
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
