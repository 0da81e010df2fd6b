"""Fixtures of the reliability suite (real processes killed, files corrupted, servers stopped)."""

from _faults import baseline, mlflow_server, start_driver

__all__ = ["baseline", "mlflow_server", "start_driver"]
