"""The project's exceptions. Every message names the offending field, tensor or file."""


class YarnJaxError(ValueError):
    """Base class of all errors yarn_jax raises about user input."""


class ConfigError(YarnJaxError):
    """A model or rope configuration is invalid or unsupported."""


class CheckpointError(YarnJaxError):
    """A checkpoint is missing tensors, has unexpected or mis-shaped tensors, or cannot be read."""


class AssetError(YarnJaxError):
    """A real-data asset (model or corpus) could not be fetched or converted."""
