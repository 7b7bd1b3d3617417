"""Machinery every stage shares: units and commits (runtime), the progress display, Prefect UI
artifacts, tokenizer helpers and special tokens, and the parallel evaluation sets."""
