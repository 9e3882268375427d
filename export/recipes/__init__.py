"""Recipes: YAML files that reproduce a model and its bundle stage by stage (``edgeseg recipe run``).

``demo.yaml`` makes the demo bundle in ``engines/demo``; ``runner.py`` validates and runs recipes.
"""
