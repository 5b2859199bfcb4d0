"""featureguard's runtime: the monitored ``generate``, policies, actions, metrics and the CLI."""
