"""Sampling and decoding."""
