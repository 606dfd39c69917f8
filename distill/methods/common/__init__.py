"""Pieces the methods share, and the hard-label and feature losses the objectives add to any method (pure functions):
logspace (soft targets as log-probabilities), standardize (logit standardization), crossentropy (CE, focal, the
kd.balance=scale combination), feature (feature distillation). No module here is a kd.loss: methods are the files of
distill/methods/ itself."""
