"""Architectures (spec: the kinds, their keys, resolving a backend's) and the mapping of a network onto
one (mapping: per-layer physical units, passes, accesses and conversions; a workload's events)."""
