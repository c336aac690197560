"""Ray Serve sampling service for npdraw."""
