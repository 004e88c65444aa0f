"""hwsim.runtime: the allocator setting the hwsim command makes (it changes speed, never a number)."""
import ctypes.util
import sys

import pytest

from hwsim import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc" not in (ctypes.util.find_library("c") or ""),
                    reason="glibc only")
def test_glibc_keeps_freed_memory():
    assert runtime.keep_freed_memory() is True


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False
