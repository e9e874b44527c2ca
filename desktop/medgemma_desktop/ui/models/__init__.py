"""Choosing a model and its adapters, and its settings."""
