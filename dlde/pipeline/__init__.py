"""Notebooks and the pipeline that executes them (the top layer of dlde).

What the notebooks call: :mod:`.notebook` (paths, the training config, figure saving, the
numbers each notebook reports). What executes them,
behind ``python -m dlde.pipeline --config figures.yaml``: :mod:`.lock` (the committed parameters
cells), :mod:`.plan` (the figures.yaml schema and the plan), :mod:`.execute` (papermill, torchrun,
the kernel check), :mod:`.progress` (progress lines and the summary), :mod:`.reports` (index.md,
metrics.md), :mod:`.sweeps` (ablations over seeds, whose reports :mod:`dlde.reports.sweeps` writes)
and :mod:`.cli` (the command line). After them, ``python -m dlde.pipeline.readme`` (:mod:`.readme`)
copies the table files into the README's marked tables.
"""
