"""Plate reader: number plates and locomotive models where the position estimator found plate
boxes (read from the full-resolution frame)."""
