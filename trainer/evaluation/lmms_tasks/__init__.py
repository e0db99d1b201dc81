"""lmms-eval task definitions of the benchmark: YAML and the functions they name (``hooks``)."""
