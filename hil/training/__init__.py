"""Training controllers on any CrossbarBackend: analog SGD, Tiki-Taka, TTv2, chopped TTv2."""
