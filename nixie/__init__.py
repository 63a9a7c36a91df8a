"""Nixie: named counters replicated across a cluster as PN-counter CRDTs."""

__version__ = "0.1.0"
