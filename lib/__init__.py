"""CHAN-ASDG: hard alignment and multi-scale fusion for image-text retrieval."""
