"""Build the optional native part of qwen-edge; everything else is declared in pyproject.toml.

On Linux, qwen_edge/native/gemv.c becomes a small shared library that makes MLX's CPU backend
multiply a vector by a matrix with cblas_sgemv (see that file and qwen_edge/backend.py). It is
optional: without a C compiler the build skips it and qwen-edge runs with plain OpenBLAS.
"""

import sys

from setuptools import Extension, setup

native = []
if sys.platform.startswith("linux"):
    native.append(
        Extension(
            "qwen_edge._gemv",
            sources=["qwen_edge/native/gemv.c"],
            libraries=["dl"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    )

setup(ext_modules=native)
