"""Build step for the one native module; everything else is in pyproject.toml.

The EVTX flattener is optional: without a C compiler Vigil installs and reads EVTX in pure
Python, at about a third of the parser's speed instead of over half.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vigil.logsources._evtxflat",
            ["vigil/logsources/_evtxflat.c"],
            optional=True,
        )
    ]
)
