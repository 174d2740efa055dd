"""Model hosting: loading, chat formatting, activation reading and steering.

Importing the package imports nothing heavy; :mod:`steerguard.model.host` loads torch.
"""
