"""Evaluation: held-out metrics for a bundle, the baselines a user would otherwise pick, plots."""
