"""Zones (polygons) and lines (tripwires): which tracks are where, and who crossed what.

Membership is decided by the mask (the fraction of the instance's mask area inside the zone)
with inertia; lines are crossed by the track's mask centroid. ``state.ZoneTracker`` is the
per-frame entry point; ``geometry`` holds the rasters and the vectorised tests; ``polygon`` the
plain-Python shape checks the configuration runs. Nothing is imported here, so that reading the
configuration (which uses ``polygon``) does not load OpenCV.
"""
