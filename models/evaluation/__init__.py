"""Evaluation: loss and text metrics overall and per slice (evaluate.py, metrics.py),
generating with an adapter on its base (serving.py, also used by the registered pyfunc), and the
pictures a person reads (report.py).
"""
