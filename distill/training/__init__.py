"""Training: the one loop every stage trains with, and what goes into it.

    engine.py        the loop (resume, SIGTERM, NaN policy, logs, checkpoints), named pieces over one TrainState
    tricks.py        optimizer, LR schedule, mixup/cutmix, label smoothing (timm's where it has them)
    models.py        timm models, init, checkpoint files, the BatchNorm-folded teacher; cifar_resnet.py
    objectives.py    what a stage minimises: CE, or CE plus a distillation method (distill/methods/), one
                     objective per kind of distillation (logit, token, feature)
    targets.py       where the soft target comes from: the cache or a live teacher, as log-probabilities
    context.py       RunContext: what every stage is handed (config, accelerator, data, run folder, its teachers)
    teachers/        the teacher sources (teacher.source: train, timm), one file each, registered with
                     @TEACHER_SOURCES.register: the teacher model before training, and the training it still needs

May import: distill.config, distill.errors, distill.registry, distill.methods, distill.data and distill.store;
never the stages.
"""
