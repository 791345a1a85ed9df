"""loraflow's benchmark suite: `python -m bench` (or `make bench`) prints the Performance table.

Each benchmark is a module with a `run()` that measures in fresh worker processes and returns a
`Figure`; ratios come from baseline and candidate measured side by side in the same run
(alternating repetitions, medians), because absolute times drift on a shared machine.
"""
