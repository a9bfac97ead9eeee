"""The enrollment pipelines' domain library: the stages' packages (``ingest``, ``warehouse``,
``sync``), the nouns and clients they share (``config``, ``contracts``, ``core``, ``clients``,
``sinks``), the operations over the line (``ops``) and the operator page's read model (``view``).
No Airflow here. Imports only go down those floors (``make lint`` checks it).

The flat modules' old paths still import, with a warning (``_moved``)."""

from enrollment import _moved

_moved.install()
