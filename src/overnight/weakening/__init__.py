"""Weakening watch: what changed between two nights that loosens what the tests check.

``settings``: protected settings compared night over night, each change with its
direction where one is known. ``code``: check statements removed, commented out or
skipped in the scenario's own files between two git commits. A leaf: stdlib only (and
``redaction``), so the engine, the report and the CLI can all use it.
"""
