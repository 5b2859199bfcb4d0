"""Readers for the on-disk SAE formats featureguard loads; :mod:`sae.loading` picks one.

Each reader module has ``NAME``, ``detect(path) -> bool`` and
``read(path) -> (SAEConfig, tensors, weights_file)`` where ``tensors`` already carry SAELens
names and shapes; :func:`sae.formats.common.build_sae` asserts every shape against the config.
"""
