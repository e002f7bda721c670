"""setuptools glue: cffi compiles csrc/ into dataplane._core (see build.py)."""

from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
