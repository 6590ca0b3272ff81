"""Rollout data: the buffer and GAE (buffer), observation and reward normalisation (normalization)."""
