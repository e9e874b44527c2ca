"""Helpers shared by tests, benchmarks and `packaging/screenshot.py`: tiny models, the real 270M's
HF base, a scripted engine and window steps. Import them as `tests.support.<module>`."""
