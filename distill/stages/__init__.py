"""The pipeline's stages, in the order `stage=all` runs them (config.STAGES): teacher.py, cache.py, student.py,
export.py. Each is `run(ctx: RunContext)` and writes one output that the next stage reads from disk
(store/layout.py); a stage never imports another. A new stage is one file here, its name in config.STAGES and its
function in run.py's `stage_functions`.

May import: every part below it (distill.config, errors, methods, data, store, training); never another stage.
"""
