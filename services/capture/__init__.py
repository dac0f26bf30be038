"""Capture one camera: read the stream, keep frames at the configured rate, send JPEGs on."""
