"""featureguard's SAE side: models, loaders, encoders, interventions, training and discovery."""

from sae.errors import FeatureguardError

__all__ = ["FeatureguardError"]
