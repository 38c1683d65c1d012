"""ASR+ per destination number, computed from the CDR topic by a faust-streaming job and published,
keyed by number, on the compacted ``asrplus`` topic. docs/state.md.

- ``cdr.py``: the CDR record on the ``cdrs`` topic; ``cdr_csv.py``: CDRs from a CSV file, for
  ``load.py`` (``scriptforge cdr load``) and ``local.py`` (``scriptforge run --cdrs``).
- ``aggregate.py``: one CDR into its number's hour buckets, and the window's figures (no Faust).
- ``app.py``: the Faust app, agent and windowed table (``scriptforge asr``); ``job.py``: the job as a
  child process (``scriptforge dev``, tests, benchmarks).
- ``figures.py``: the record on the ``asrplus`` topic.

The window and the status rule are ``sandbox/asr.py``, shared with the local host;
``pipeline/state/asr.py`` reads the figures back for the worker's host. Only ``app.py`` imports
Faust, so that the CLI and the worker stay quick to start.
"""
