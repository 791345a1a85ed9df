"""The base model: where it lives (a local directory or a hub id), loading it safely on the
right device and dtype, and probing what its own code can do (packing, gradient checkpointing).
"""
