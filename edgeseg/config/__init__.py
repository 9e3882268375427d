"""Configuration: the YAML schema and its loader."""

from edgeseg.config.schema import CONFIG_VERSION, DEFAULT_SERVICE_CONFIG, Config, load_config, parse_config

__all__ = ["CONFIG_VERSION", "DEFAULT_SERVICE_CONFIG", "Config", "load_config", "parse_config"]
