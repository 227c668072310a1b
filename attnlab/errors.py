"""Errors raised on bad input, before any work starts."""


class ConfigError(ValueError):
    """An invalid configuration value. The message names the field and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class InputError(ValueError):
    """Invalid model input (shape, dtype, length beyond the cache)."""
