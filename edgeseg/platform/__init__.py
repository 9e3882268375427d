"""Facts about the machine edgeseg is installed on: Jetson release, software stack, system probes.

Stdlib only, because ``make install`` runs these modules from the source tree with the system
Python *before* edgeseg and its dependencies are installed (``python3 -m
edgeseg.platform.jetson --pip-constraints``). Every probe reads through a ``Host`` (a root
directory, a command runner and a module importer), so the tests point it at recorded devices
under ``tests/data/platforms/`` instead of this machine.
"""
