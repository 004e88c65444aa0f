"""Processes a test started, found by a mark in their environment (children and grandchildren inherit it)."""
import os
import time
from pathlib import Path


def marked(mark: str) -> list[int]:
    """Pids of live processes (not zombies) whose environment carries ``mark``, this one excepted."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def gone(mark: str, within: float = 10.0) -> bool:
    """Whether every process marked ``mark`` has ended within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not marked(mark):
            return True
        time.sleep(0.2)
    return False
