"""Teacher sources (`teacher.source`), one file each, registered with `@TEACHER_SOURCES.register(NAME)`
(distill/registry.py): a source is `build(teacher, num_classes, key) -> (model, epochs, lr)`, the teacher model
before any training and the training it still needs (epochs, lr per 256 images; 0 epochs: none). The teacher stage
(distill/stages/teacher.py) looks the source up by name; adding one is a file here.

    train.py   from scratch: a timm architecture, initialised (teacher.init), trained teacher.epochs
    timm.py    a timm model with weights: a local checkpoint file (teacher.checkpoint) or the hub's
               (teacher.pretrained), fine-tuned teacher.finetune.epochs

May import: what distill/training/ may, and distill/training's modules.
"""
