"""Aggregator: frames from every capture -> object store, then a FrameRef on ``frames.v1``."""
