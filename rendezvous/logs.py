"""Structured logs: one JSON object per event, for ``twistd --logger``.

    twistd --logger rendezvous.logs.json_observer -n rendezvous ...

Every event keeps its fields (client address, session id, allocation
user, error), so a log shipper can index them; passwords and credentials are
never logged by this suite. Without ``--logger``, twistd writes its usual
text lines.
"""

import sys

from twisted.logger import jsonFileLogObserver


def json_observer():
    """An observer writing one JSON object per line to standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
