"""The single place that holds fastbn's version."""
__version__ = "0.1.0"
