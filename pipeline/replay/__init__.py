"""Record and replay: proving a script change against recorded traffic (docs/replay.md).

- :mod:`pipeline.replay.compare`: what a replayed run is, how it is compared with its original, and
  the summary of a replay;
- :mod:`pipeline.replay.session`: the host a replayed run sees (its recorded answers and datastore);
- :mod:`pipeline.replay.runner`: runs a recording in the sandbox pool;
- :mod:`pipeline.replay.archive`: the Avro object container files ``scriptforge record`` writes;
- :mod:`pipeline.replay.report`: the HTML report of a replay;
- :mod:`pipeline.replay.live`: a recording sent through Kafka as load (``replay --live``).
"""
