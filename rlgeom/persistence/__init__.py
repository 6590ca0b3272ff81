"""Persistence: model files (serialization), checkpoints (checkpoint), run logs written (logger) and
read back (runlogs)."""
