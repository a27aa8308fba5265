"""Mechanistic analysis of checkpoints: logit lens and attribution (:mod:`.lens`),
counterfactuals and batched activation patching (:mod:`.tracing`), circuits as data
(:mod:`.circuits`), and every measure across a checkpoint series with an on-disk
cache (:mod:`.series`).

Importing this package is cheap: TransformerLens is only needed by the models these
functions receive.
"""
