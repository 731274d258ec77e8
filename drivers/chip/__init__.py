"""Test-chip boards over a framed serial protocol: SerialCrossbar and a chip emulator."""
