"""Protocols that train and measure: the few-shot, unknown-object and retrieval protocols on base
models trained on part of the digits, and the large-vocabulary sweeps read back.

:mod:`.tables` holds their tables.
"""
