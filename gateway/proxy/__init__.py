"""Forward every call unchanged and hand a key-free record to capture."""
