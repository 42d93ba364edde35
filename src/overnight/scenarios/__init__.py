"""Built-in scenarios (the demo night, and a no-op one for benchmarks)."""
