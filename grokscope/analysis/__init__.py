"""Mechanistic analysis of checkpoints: logit lens and attribution (:mod:`.lens`),
counterfactuals and batched activation patching (:mod:`.tracing`), circuits as data
(:mod:`.circuits`).

Importing this package is cheap: TransformerLens is only needed by the models these
functions receive.
"""
