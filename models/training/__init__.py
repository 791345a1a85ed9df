"""Training an adapter: the Trainer run (train.py), its checkpoints, data-parallel processes,
the LoRA-FA autograd path, peak memory, out-of-memory/disk errors, the numeric environment that
can change float results, and the memory plan of a run before any weight loads (plan.py).
"""
