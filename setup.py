"""The one compiled part: relay._mmsg, batched UDP reads and writes (metadata is in setup.cfg)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("relay._mmsg", ["relay/_mmsg.c"], extra_compile_args=["-O2", "-Wall", "-Wextra"])])
