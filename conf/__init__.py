"""Configuration (omegaconf YAML files in this folder) and the prompt templates."""

from conf.loader import (
    ConfigError,
    available_configs,
    load_config,
    load_config_with_sources,
    save_config,
)

__all__ = ["ConfigError", "available_configs", "load_config", "load_config_with_sources",
           "save_config"]
