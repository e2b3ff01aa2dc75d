"""The public path of ``refine`` (README: ``from sipl.refine import refine``); it lives in ``sipl.models.refine``."""

from sipl.models.refine import refine

__all__ = ["refine"]
