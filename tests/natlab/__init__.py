"""Tests through real Linux NATs built in network namespaces (need root)."""
