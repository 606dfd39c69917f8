"""The pipeline's stages, in the order `stage=all` runs them (config.STAGES). Each imports only the shared layers
(data, views, engine, objectives, softlabels, layout, ...), never another stage: they meet on disk (layout.py)."""
