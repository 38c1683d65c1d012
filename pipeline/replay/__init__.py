"""Record and replay: proving a script change against recorded traffic (docs/replay.md).

- :mod:`pipeline.replay.recordings`: reads a script's recorded runs off the recordings topic
  (``scriptforge record``), into :mod:`pipeline.replay.archive`, the recording file;
- :mod:`pipeline.replay.session`: the host a replayed run sees (its recorded answers, then a model of
  the state), with :mod:`pipeline.replay.live_data` for look-ups no recording holds;
- :mod:`pipeline.replay.versions`: which script replays each run;
- :mod:`pipeline.replay.runner`: runs a recording in a sandbox pool, and :mod:`pipeline.replay.shards`
  splits a replay over processes;
- :mod:`pipeline.replay.compare`: when a replayed run counts as changed, and the summary;
- :mod:`pipeline.replay.report`: the HTML report of a replay;
- :mod:`pipeline.replay.live`: a recording sent through Kafka as load (``replay --live``);
- :mod:`pipeline.replay.local`: recordings made outside the worker (benchmarks, tests).
"""
