"""Finding the external programs the local stack runs, with install advice when one is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import UserError

INSTALL_HINTS = {
    "java": "install Java 17 or newer: apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME)",
    "mvn": "install Maven: apt-get install -y maven (it resolves the Kafka jars from Maven Central)",
    "redis-server": "install Redis: apt-get install -y redis-server (or put a redis-server on PATH)",
}


def require_program(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise UserError(f"'{name}' was not found on PATH; {INSTALL_HINTS.get(name, 'install it')}")
    return Path(found)


def require_java(min_major: int = 17) -> Path:
    """The java binary (JAVA_HOME first, then PATH), checked to be at least ``min_major``."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = candidate if candidate and candidate.is_file() else require_program("java")
    probe = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', probe.stderr + probe.stdout)
    if match is None:
        raise UserError(f"could not read the version of {java}; {INSTALL_HINTS['java']}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < min_major:
        raise UserError(f"{java} is Java {major}; Kafka 4 needs Java {min_major}+: {INSTALL_HINTS['java']}")
    return java
