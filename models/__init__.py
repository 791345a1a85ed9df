"""loraflow's compute floor: plain torch/transformers/peft code, callable from a notebook.

Sub-packages follow the pipeline: config/ (the typed run configuration and each stage's argument
object), base_model/ (finding, loading and probing the base), data/ (reading, rendering and
packing the splits), methods/ (one module per adapter method), training/ (the Trainer run, its
checkpoints, memory and plan), evaluation/ (metrics, generation, pictures), registry/ (promotion
decisions, what a version says about itself, reproduction verdicts), export/ (the streamed
merge). checks.py holds every check made before anything is trained; hashing.py the content
hashes used as lineage; errors.py the base of every user-facing error.
"""
