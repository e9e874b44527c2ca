"""The demo chain-of-thought dataset, the LoRA training that makes the shipped demo adapter, and its evaluation."""
