"""Datasets and fine-tuning files out of the store; dataset items from recorded calls, runs
and files (dataset_items.py, dataset_files.py)."""
