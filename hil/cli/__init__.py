"""The ``hil`` command line (click).  Each sub-command lives in its own module."""
