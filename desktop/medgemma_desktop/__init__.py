"""medgemma_desktop."""
