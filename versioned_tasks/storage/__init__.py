"""The storage layer: the only code that names a Huey storage class.

Dead-letter stores, fleet boards, header scans, in-place rewrites, the atomic pop
and reliable fetch, one per backend.
"""
