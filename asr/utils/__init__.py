"""Utilities under every stage: atomic writes, the thread governor, numeric precision, downloads; imports errors only."""
