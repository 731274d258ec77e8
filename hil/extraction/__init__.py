"""Model extraction: averaging of TTv2 iterates, export to digital, deployment onto another array."""
