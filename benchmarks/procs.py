"""Run a command and measure its wall time and peak memory (Linux, stdlib only)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
_SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Measured:
    """One finished command.

    ``peak_rss_mb`` is the largest resident set of any one process of the command
    (the kernel's ``ru_maxrss``); ``peak_tree_rss_mb`` is the largest sum over the
    command's whole process tree (helpers such as a temporary Prefect server
    included), sampled every 50 ms.
    """

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    peak_tree_rss_mb: float
    output: str

    def result(self) -> dict:
        """The JSON a worker printed on its ``RESULT`` line."""
        for line in reversed(self.output.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        raise RuntimeError(f"{self.command} printed no RESULT line:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run(
    command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 3600
) -> Measured:
    """Run ``command`` to completion; raise if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(process.stdout), daemon=True)
    reader.start()
    tree_peak = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, _tree_rss_mb(process.pid))
        if time.perf_counter() - started > timeout:
            _kill_tree(process.pid)
        time.sleep(_SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    measured = Measured(
        command=command,
        returncode=process.returncode,
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,
        peak_tree_rss_mb=tree_peak,
        output="".join(chunks),
    )
    if measured.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {measured.returncode}:\n{measured.tail()}"
        )
    return measured


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _tree(root: int) -> list[int]:
    children, pids, index = _children(), [root], 0
    while index < len(pids):
        pids += children.get(pids[index], [])
        index += 1
    return pids


def _tree_rss_mb(root: int) -> float:
    total = 0.0
    for pid in _tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_MB
        except (OSError, IndexError):
            continue
    return total


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _kill_tree(root: int) -> None:
    for pid in reversed(_tree(root)):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            continue
