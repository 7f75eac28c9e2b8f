"""The compiled parts of the relay data path (metadata is in setup.cfg).

relay._indications, the Send indication parser, is portable C; relay._mmsg,
batched UDP reads and writes (recvmmsg, sendmmsg) with the STUN Binding fast
path (relay/_binding.c), the routed relay (relay/_route.c) and the wait
that spares the reactor's turns (relay/_stay.c) inside, and
relay._requests, a live allocation's Refresh, CreatePermission and
ChannelBind, and the Allocate that makes it, checked and signed (HMAC-SHA1
from OpenSSL's libcrypto), and relay._sockets, a relay socket made in one call, are built on Linux only.
"""

import sys

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra"]
extensions = [Extension("relay._indications", ["relay/_indications.c"], depends=["relay/_sendwalk.h", "relay/_stun_bytes.h"],
                        extra_compile_args=FLAGS)]
if sys.platform.startswith("linux"):
    # relay/_binding.c, the STUN Binding fast path, answers inside _mmsg's batched read; relay/_route.c
    # relays routed ChannelData and peer data there; relay/_stay.c serves those sockets between reactor turns.
    extensions.append(Extension("relay._mmsg", ["relay/_mmsg.c", "relay/_binding.c", "relay/_route.c", "relay/_stay.c"],
                                depends=["relay/_binding.h", "relay/_mmsg.h", "relay/_sendwalk.h", "relay/_stun_bytes.h"],
                                extra_compile_args=FLAGS))
    extensions.append(Extension("relay._requests", ["relay/_requests.c"], depends=["relay/_stun_bytes.h"],
                                libraries=["crypto"], extra_compile_args=FLAGS))
    # relay/_sockets.c makes a relay socket (socket, bind, buffers) in one call.
    extensions.append(Extension("relay._sockets", ["relay/_sockets.c"], extra_compile_args=FLAGS))
setup(ext_modules=extensions)
