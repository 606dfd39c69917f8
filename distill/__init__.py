"""distill: knowledge-distillation pipelines for image classification (teacher -> soft-label cache -> student)."""

__version__ = "0.1.0"
