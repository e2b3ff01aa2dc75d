"""Evaluation: the metric convention, classical baselines, scoring refinement steps, selection and the report.

- ``metrics``: PSNR / SSIM (RGB and Y) with the field's conventions.
- ``classical``: the classical baseline of each degradation family.
- ``evaluate``: scoring refinement steps 0..K per scheme on the val/test shards (the ``evaluate`` stage).
- ``selection``: choosing the scheme and step count on validation (the ``select`` stage).
- ``report``: the HTML report of a run (the ``report`` stage).
"""
