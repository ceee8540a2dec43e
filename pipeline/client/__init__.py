"""Client library for the producing side: publish deltas, follow verdicts, act on them.

See docs/client.md.
"""

from pipeline.client.guard import GuardClient, GuardedMessage
from pipeline.client.release import ReleaseBuffer, ReleaseEvent, ReleaseMode

__all__ = ["GuardClient", "GuardedMessage", "ReleaseBuffer", "ReleaseEvent", "ReleaseMode"]
