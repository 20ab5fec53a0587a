"""Datasets and fine-tuning files out of the store."""
