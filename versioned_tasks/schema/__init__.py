"""The schema layer: task specs, the registry, the whole-registry checks and the
compatibility diff. Imports only ``wire`` below it.
"""
