"""FRAP models."""
