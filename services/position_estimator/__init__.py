"""Position estimator: YOLO head/tail detections placed on the depot tracks."""
