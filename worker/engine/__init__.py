"""Engines: the narrow interface a worker drives (load, stream a job, cancel, close)."""
