"""Child processes of the dev stack and the benchmarks: started in their own session, stopped in order."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Child:
    """One started process and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: Any = None

    def start(self, env: dict[str, str]) -> None:
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C goes to the parent only, which stops children in order
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """Every child started, stopped in reverse order."""

    children: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop(grace_s=15.0)

    def dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)
