"""Keeping freed memory on CPU: the mallopt calls and their opt-out (with a fake C library), and in a fresh process
on glibc, that a 64 MB tensor comes from the heap instead of its own mmap once the settings are applied."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finlight.core import cpu_memory


class FakeLibc:
    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", False)


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("0", False), ("off", False),
                                             (" False ", False), ("yes", True)])
def test_wanted_reads_the_opt_out(value, expected):
    assert cpu_memory.wanted({} if value is None else {cpu_memory.ENV: value}) is expected


def test_sets_no_mmap_and_a_1_gib_trim_threshold_once():
    libc = FakeLibc()
    line = cpu_memory.keep_freed_memory(libc, environ={})
    assert libc.calls == [(cpu_memory.M_MMAP_MAX, 0), (cpu_memory.M_TRIM_THRESHOLD, 1 << 30)]
    assert "keeps freed memory" in line and cpu_memory.ENV in line and cpu_memory.active()
    assert cpu_memory.keep_freed_memory(libc, environ={}) is None and len(libc.calls) == 2  # once per process


def test_opt_out_and_refusal_leave_malloc_alone():
    libc = FakeLibc()
    assert cpu_memory.keep_freed_memory(libc, environ={cpu_memory.ENV: "0"}) is None and libc.calls == []
    refusing = FakeLibc(answer=0)
    assert cpu_memory.keep_freed_memory(refusing, environ={}) is None and not cpu_memory.active()


PROBE = """
import ctypes, sys
import torch
from finlight.core import cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = cpu_memory.glibc()
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert cpu_memory.keep_freed_memory() is not None
before = libc.mallinfo2().hblkhd
big = torch.zeros(16 << 20)  # 64 MB: above glibc's largest mmap threshold (32 MB)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(cpu_memory.glibc() is None or not hasattr(cpu_memory.glibc(), "mallinfo2"),
                    reason="needs glibc >= 2.33")
@pytest.mark.parametrize("mode", ["default", "keep"])
def test_a_big_tensor_comes_from_the_heap_once_applied(mode):
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "PYTHONPATH": ":".join(sys.path), cpu_memory.ENV: "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    mmapped = int(done.stdout.split()[-1])
    if mode == "default":
        assert mmapped >= 64 << 20  # its own mapping, unmapped (and faulted in again) on every reallocation
    else:
        assert mmapped == 0


def test_the_cli_applies_it_on_cpu_and_says_so_once(in_tmp, monkeypatch, capsys):
    from helpers import tiny_config
    from finlight.cli import run_cli

    libc = FakeLibc()
    monkeypatch.setattr(cpu_memory, "glibc", lambda: libc)
    for _ in range(2):
        run_cli(["validate", "--config", tiny_config(in_tmp, trainer={"limit_val_batches": 1})])
    assert libc.calls == [(cpu_memory.M_MMAP_MAX, 0), (cpu_memory.M_TRIM_THRESHOLD, 1 << 30)]
    lines = [line for line in capsys.readouterr().out.splitlines() if "keeps freed memory" in line]
    assert len(lines) == 1 and lines[0].startswith("finlight: glibc malloc")
