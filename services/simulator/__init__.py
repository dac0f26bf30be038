"""The depot simulator: world model, rendering, RTSP cameras, datasets, detector training."""
