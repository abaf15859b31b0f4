"""What each training preset trains on, free of torch: its dataset and that dataset's options.

:data:`dlde.train.config.PRESETS` takes a preset's data from :data:`PRESET_DATA`, and ``python -m
dlde.train`` checks the dataset a command asks for against it before torch loads
(:mod:`.preflight`): a typo in a dataset's size is refused in a fraction of a second, not after the
imports or, worse, after the generator has filled the memory.
"""
from __future__ import annotations

from typing import Any

#: The preset of ``python -m dlde.train`` when ``--preset`` is not given.
DEFAULT_PRESET = "digits"

#: The embedded digits of the paper figures (the ``digits`` preset); the glyphs presets keep them
#: beside their own options, as their run folders recorded them.
_DIGITS = {"digits_canvas_size": 64, "digits_size": (12, 24), "digits_per_image": (1, 3), "digits_train_images": 2000,
           "digits_val_images": 400}

#: Preset name -> (dataset, dataset options): the ``dataset`` and ``dataset_options`` of
#: :data:`dlde.train.config.PRESETS`.
PRESET_DATA: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("digits", _DIGITS),
    "tiny": ("digits", {"digits_canvas_size": 64, "digits_size": (16, 24), "digits_per_image": (1, 2),
                        "digits_train_images": 32, "digits_val_images": 16, "digits_classes": (0, 1, 2)}),
    "glyphs-100": ("glyphs", {**_DIGITS, "glyphs_classes": 100}),
    "glyphs-300": ("glyphs", {**_DIGITS, "glyphs_classes": 300}),
    "glyphs-1000": ("glyphs", {**_DIGITS, "glyphs_classes": 1000}),
}
