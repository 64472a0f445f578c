"""Plugin agents: small one-task programs on their own interval, outputs archived as devices."""

from .base import Plugin, value

__all__ = ["Plugin", "value"]
