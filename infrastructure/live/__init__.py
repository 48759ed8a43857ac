"""Live delivery of the log: which org and evaluation an event belongs to, the org feed by
position, and one tailer per process that fans new events out to stream subscribers."""
