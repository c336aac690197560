"""Built-in npdraw components."""
