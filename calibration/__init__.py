"""Device-model calibration from measured pulse-response curves (``hil.calibration``)."""
