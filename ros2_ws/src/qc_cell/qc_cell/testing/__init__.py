"""Test support shared by the unit, node and system tests (not used by the nodes)."""
