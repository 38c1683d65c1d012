"""ScriptForge's chaos suite: faults injected into a running pipeline under open-loop load.

Each experiment (``experiments.py``) starts its own workers as real ``python -m pipeline worker``
subprocesses under a topic prefix of its own, on a single-node broker the suite starts for itself
(``broker.py``: one experiment restarts it, and no other test may see that). A load generator
(``load.py``) sends requests at a fixed rate on a schedule and measures each reply's latency from the
request's *scheduled* send time, so a stall shows as latency and not as fewer requests. The figures
(``measure.py``) and the report (``report.py``) say what each fault did: lost requests, duplicates,
error outcomes, p50/p99 before/during/after, the time to recover.

Run by ``pytest tests/chaos`` (the short profile; the tests assert only what must hold on any machine)
or ``python -m tests.chaos --profile long [--only NAME] [--json FILE]``.
"""
