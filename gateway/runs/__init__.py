"""Group exchanges into agent runs."""
