"""Merge-and-export: an adapter merged into its base one safetensors shard at a time (merge.py),
with PEFT's own arithmetic per layer (layer_update.py) and tensors streamed to and from files
(shards.py).
"""
