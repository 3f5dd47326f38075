"""Configuration (omegaconf YAML files in this folder) and the prompt templates."""

from conf.loader import ConfigError, available_configs, load_config, save_config

__all__ = ["ConfigError", "available_configs", "load_config", "save_config"]
