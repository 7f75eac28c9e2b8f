"""A certificate fingerprint as it travels with the candidates (RFC 8122 §5, WebRTC's ``a=fingerprint``).

``sha-256`` and the 32 digest bytes in upper-case hex, colon-separated. The
peer makes it from its certificate; the node only checks its form and
passes it on with the ICE credentials.
"""

import re

FINGERPRINT = re.compile(r"sha-256 [0-9A-F]{2}(?::[0-9A-F]{2}){31}")
