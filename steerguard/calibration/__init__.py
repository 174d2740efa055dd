"""Offline calibration: labelled prompts -> a bundle (probe, vectors, thresholds, manifest)."""
