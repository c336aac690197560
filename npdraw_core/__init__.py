"""npdraw core."""
