#: The library's version; envelopes name their producer ``versioned_tasks/<version>``
#: in the ``by`` header field.
__version__ = "0.1.0"
