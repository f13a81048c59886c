"""Build the extension: the C core as a static library, linked into pyaccel._driver.

Metadata and options live in setup.cfg.
"""
import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

CFLAGS = ["-std=gnu11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"]

driver = (
    "pyaccel_driver",
    {
        "sources": sorted(glob.glob("driver/src/*.c")),
        "include_dirs": ["driver/include"],
        "macros": [("_GNU_SOURCE", None)],
        "cflags": CFLAGS,
    },
)

setup(
    libraries=[driver],
    ext_modules=cythonize(
        [
            Extension(
                "pyaccel._driver",
                ["pyaccel/_driver.pyx"],
                include_dirs=["driver/include"],
                libraries=["pthread"],
            )
        ],
        compiler_directives={"language_level": "3"},
    ),
)
