"""The compiled parts of the relay data path (metadata is in setup.cfg).

relay._indications, the Send indication parser, is portable C; relay._mmsg,
batched UDP reads and writes (recvmmsg, sendmmsg), is built on Linux only.
"""

import sys

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra"]
names = ["_indications"] + (["_mmsg"] if sys.platform.startswith("linux") else [])
setup(ext_modules=[Extension(f"relay.{name}", [f"relay/{name}.c"], extra_compile_args=FLAGS) for name in names])
