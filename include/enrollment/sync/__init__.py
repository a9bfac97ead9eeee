"""Stage 3: from the warehouse to each sink, catching up by itself after an outage."""

from enrollment._moved import forward

__getattr__ = forward("enrollment.sync")  # the names this module had before the relayout
