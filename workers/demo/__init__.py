"""``guardstream demo``: the whole pipeline end to end on the local stack, watched live."""
