"""Stage 2: the one writer, pending batches into BigQuery, and the ledger."""

from enrollment._moved import forward

__getattr__ = forward("enrollment.warehouse")  # the names this module had before the relayout
