"""Robust inference under device variation: Lipschitz regularization, RL-placed error compensation."""
