"""Tracked objects, zones, lines and events: what a security camera's subscribers consume.

The analytics run in the pipeline's output thread after postprocessing, frame by frame in order:
``edgeseg.tracking`` (identities) -> ``edgeseg.zones`` (zone membership and line crossings,
decided by the mask) -> ``edgeseg.events`` (the event lifecycle). ``types.py`` holds the records
they hand each other and the sinks.
"""
