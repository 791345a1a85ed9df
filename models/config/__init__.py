"""The run configuration: one typed, nested pydantic model loaded from YAML (run.py, with one
module per large section), the house way of saying a validation error (schema.py), the frozen
argument object each stage computes with (specs.py), and docs/configuration.md rendered from the
schema (reference.py).
"""
