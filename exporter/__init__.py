"""spend-exporter: cloud and AI API spend as Prometheus metrics."""

__version__ = "0.1.0"
