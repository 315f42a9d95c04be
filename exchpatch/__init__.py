"""exchpatch: drive exchangeops.patching from a shell, a bot or Python."""

__version__ = "0.1.0"
