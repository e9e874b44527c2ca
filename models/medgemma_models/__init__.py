"""medgemma_models."""
