"""Hostile input: a corpus of bad and absurd messages, and proof that one worker survives all of it."""
