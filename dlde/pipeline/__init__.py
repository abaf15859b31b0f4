"""Notebook support: :mod:`.notebook` holds what the notebooks call (paths, figure saving, the
numbers each notebook reports, the parameters lock); :mod:`.runner` is the papermill pipeline
behind ``python -m dlde.pipeline --config figures.yaml`` (figures and sweeps)."""
