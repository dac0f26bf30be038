"""Plate reader: number plates and locomotive models from camera frames."""
