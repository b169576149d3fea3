"""Side-by-side benchmarks; each module exposes `run(quick: bool) -> dict`."""
