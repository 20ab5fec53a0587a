"""The JSON API, and who may use it."""
