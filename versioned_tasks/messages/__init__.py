"""The message layer: the reader and writer of envelopes, outcomes and actions,
the newer-version policy, emit pins and the legacy (pickle) readers.

Pure: it names no storage and no app; it imports only ``wire`` and ``schema``.
"""
