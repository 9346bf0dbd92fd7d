"""The ML core: data, network, Lightning pieces. Knows nothing of Optuna."""
