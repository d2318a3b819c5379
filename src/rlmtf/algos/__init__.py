"""Training algorithms that turn logged data into fusion policies."""
