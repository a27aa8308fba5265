"""Mechanistic analysis of checkpoints: logit lens and attribution (:mod:`.lens`),
counterfactuals and batched activation patching (:mod:`.tracing`), circuits as data
(:mod:`.circuits`), and every measure across a checkpoint series with an on-disk
cache (:mod:`.series`). Edge-level circuit discovery: the component graph
(:mod:`.graph`), edges patched and differentiated through hooks (:mod:`.edge_patching`),
EAP / EAP-IG / exact edge scores (:mod:`.discovery`), circuit selection and exact
faithfulness (:mod:`.faithfulness`), a discovered circuit and its JSON
(:mod:`.circuit_discovery`), and its formation over checkpoints (:mod:`.discovery_series`).

Importing this package is cheap: TransformerLens is only needed by the models these
functions receive.
"""
