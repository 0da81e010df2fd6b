"""Shared test root: puts ``tests/`` on ``sys.path`` so suites can import ``_servers``."""
