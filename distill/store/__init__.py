"""The store: everything a run writes to disk and reads back, and how it knows an output is still valid.

    records.py       the typed records a run writes and reads back (meta.json, metrics, the normalization,
                     summary.json and its rows, cache.json, test and ensemble scores, export.json, failed.json):
                     the one place their JSON keys appear (sealing and format versions: files.Sealed)
    artifacts.py     a stage's weights and its sealed meta.json, reuse checks, the run lock (atomic JSON and
                     checksums: distill/files.py)
    checkpoint.py    training checkpoints: written to a temporary folder and renamed, verified before loading;
                     progress.json's record (Progress, over the loop's TrainState)
    softlabels.py    the soft-label cache's file format: records, shards, the manifest (CacheManifest), what the
                     bytes depend on (CacheIdentity: its hash names the folder), dense or top-k (LogitsKept), the
                     memory-mapped reader
    fingerprints.py  each output's fingerprint inputs (a cache's: its CacheIdentity), from the schema's `changes`
                     tags
    layout.py        where each stage writes and the next one reads (run folder, cache folder, data statistics)

May import: distill.config, distill.errors, distill.methods (the record's standardization) and
distill.data (the view record); never the training loop or the stages.
"""
