"""Importers of measurement formats into the pulse-response CSV schema (plug-ins)."""
