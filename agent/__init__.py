"""hazgate agent: config, scheduling, normalization, checks, store, uplink and CLI."""

__version__ = "0.1.0"
