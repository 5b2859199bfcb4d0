"""Finding, inspecting, steering and cataloguing SAE features; probes; detection evaluation.

Modules (each builds on the shared encode path :func:`sae.discovery.activations.encode_items`):

- ``data``: text sets (JSONL, or the detection set by ``DIR:CATEGORY:SPLIT``) and their hashes.
- ``activations``: text → per-token feature values of the scored span (position 0 excluded).
- ``contrast``: rank features by AUC between two sets (``features find``).
- ``inspect``: top contexts, histogram, density, logit lens (``features show``).
- ``neighbours``: decoder-cosine neighbours (``features near``).
- ``steer``: clamp a feature while generating (``steer``).
- ``catalog_io``: write catalog entries (``features find --write-catalog``, ``features add``).
- ``probe`` / ``probe_catalog``: logistic probes that evaluate exactly like the compiled policy
  (``features train-probe``).
- ``metrics`` / ``detection``: AUC, Wilson intervals, recall at FPR; ``eval detection``.
"""
