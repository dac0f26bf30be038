"""Shared runtime of every service: settings, Kafka and S3 adapters, logs, metrics, shutdown."""
