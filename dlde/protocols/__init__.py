"""Protocols that train and measure: the few-shot (:mod:`.fewshot`, ``python -m dlde.protocols.fewshot``),
unknown-object (:mod:`.openset`) and retrieval (:mod:`.retrieval`) protocols on base models trained
on part of the digits (:mod:`.base_runs`), and the large-vocabulary sweeps read back
(:mod:`.vocabulary`). Their results are typed (dataclasses with ``to_dict`` / ``from_dict``, the
JSON of ``results.json``); :mod:`.tables` writes their tables.
"""
