"""The app layer: ``VersionedSerializer``, the task wrapper, ``VersionedHuey`` and its
backend classes, the fleet heartbeat consumer.
"""
