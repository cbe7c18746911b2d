"""The storage layer: the only code that names a Huey storage class.

One adapter per backend (``adapters.py``, chosen by ``adapter_for``) gives its
dead-letter store, fleet board, header scan, in-place rewrite, atomic pops and
whether reliable fetch can run.
"""
