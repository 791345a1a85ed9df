"""The splits: reading every file type and shape (formats.py), chat templates and prompt encoding
shared by training and serving (chat.py), validation and tokenization (splits.py), padding-free
packed batches (packing.py).
"""
