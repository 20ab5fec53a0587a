"""Wire bytes to a typed, redacted, priced record, and rows that fit the schema."""
