"""The pipeline's own exceptions, raised by one stage and caught by another (or by the DAGs'
failure callback, which quotes their messages): each message names the batch, the numbers and
the service, never a personal value."""

from __future__ import annotations


class GateError(RuntimeError):
    """A gate found numbers that do not balance; the message says which."""


class SyncError(RuntimeError):
    """Some regions of a sync run failed; the message names them and why."""


def said(step: str, exc: BaseException) -> str:
    return f"{step}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


class RequestError(ValueError):
    """A parameter of the run that cannot be honoured; the message says which and why."""
