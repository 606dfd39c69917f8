"""The pipeline's stages: teacher.py, cache.py, student.py, export.py (and the report, distill/report.py). Each is
`run(ctx: RunContext)`, registered with `@STAGES.register(NAME)` (distill/registry.py, the idiom of every extension
point; run.py looks each up by name), and writes one output that the next stage reads from disk (store/layout.py); a
stage never imports another. `stage=all` runs them in the order of registry.STAGES. A new stage is one file here,
its name placed in that order.

May import: every part below it (distill.config, errors, registry, methods, data, store, training); never another
stage.
"""
