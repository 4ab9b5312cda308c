"""Training: corpus manifests, pre-tokenization, packing, the Lightning module."""
