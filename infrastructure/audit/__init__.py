"""Audit surfaces over the event log: the wire shape of an event, chain verification and
checkpoints (`assay audit`), export and import between databases (`assay log`)."""
