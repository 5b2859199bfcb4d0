"""One module per SAE architecture; :mod:`sae.registry` maps the ``architecture`` string to each."""
