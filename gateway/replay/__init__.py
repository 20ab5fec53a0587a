"""Re-send recorded calls and runs through the proxy; diff them; experiments."""
