"""The wire layer: envelope framing and limits, signing, tagged values, remote exceptions.

Imports nothing else from the package but ``exceptions``; every layer above reads
and writes bytes through it.
"""
