"""ASR+ per destination number, computed from the CDR topic by a faust-streaming job and published,
keyed by number, on the compacted ``asrplus`` topic (``figures.py`` is its record). The window and the
status rule are ``sandbox/asr.py``, shared with the local host; ``pipeline/state/asr.py`` reads the
figures back for the worker's host. Nothing here imports Faust but the job's app module, so that the
CLI and the worker stay quick to start. docs/state.md.
"""
