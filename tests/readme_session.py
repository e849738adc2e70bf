"""Run the README's console examples, in order, against what the README says they ran against.

That is: a fresh state directory, `config/quickstart.toml`, the daemon running, and two
`dispatcher listen` receivers, on ports 9000 (answering 200) and 9001 (answering 503).
Before each command the session waits until no delivery is pending, so what a command shows
does not depend on how fast the daemon was.

    python -m tests.readme_session --write    # rewrite the outputs in README.md from a run

`tests/test_readme.py` runs the same session and compares each output with the README's,
after `normalize` hides what differs from run to run (ids of messages, secrets, times).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
PORTS = ("9000", "9001")


@dataclass
class Example:
    command: str
    output: str


def parse(block: str) -> list[Example]:
    """Split a console block into commands (`$ ...` lines) and the output under each."""
    examples: list[Example] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            examples.append(Example(line[2:], ""))
        elif examples:
            examples[-1].output += line + "\n"
    for example in examples:
        example.output = example.output.rstrip("\n")
    return examples


def render(examples: list[Example]) -> str:
    return "\n\n".join(
        f"$ {e.command}\n{e.output}" if e.output else f"$ {e.command}" for e in examples
    )


def blocks(text: str) -> list[list[Example]]:
    return [parse(body) for body in BLOCK.findall(text)]


_VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "<secret>"),
    (re.compile(r"v1,[A-Za-z0-9+/=]+"), "<signature>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z?"), "<time>"),
    (re.compile(r"(webhook-timestamp: )\d+"), r"\1<unix>"),
    (re.compile(r"\b\d+ ms\b"), "<n> ms"),
    (re.compile(r"\b\d+(\.\d+)?s\b"), "<n>s"),
    (re.compile(r"(Date|Server): .*"), r"\1: <value>"),
]


def normalize(text: str) -> str:
    """Hide what changes between runs, and the column padding that follows from it."""
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


class Session:
    """The processes the README's examples ran against, in a directory of their own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "config").symlink_to(ROOT / "config")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        self.env["DISPATCHER_CONFIG"] = "config/quickstart.toml"
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.env["COLUMNS"] = "200"
        # The README says 9000 and 9001; if taken, this run uses others and maps them back.
        self.ports: dict[str, str] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dsn = ""

    def start(self) -> None:
        daemon_log = self._spawn("daemon", ["dispatcher", "run"])
        wait_until(lambda: "daemon_started" in daemon_log.read_text(), "the daemon")
        self.dsn = re.findall(r"^database: (\S+)", daemon_log.read_text(), re.M)[0]
        for readme_port, status in zip(PORTS, ("200", "503"), strict=True):
            self.ports[readme_port] = self._start_receiver(readme_port, status)

    def _start_receiver(self, readme_port: str, status: str) -> str:
        """Start `dispatcher listen` on the README's port, or if that is taken on the first free
        one of the same width (columns); return the port. Each try is the receiver binding the
        port itself, so no port is found free and then taken by another process before it binds.
        """
        for port in [readme_port, *map(str, range(9100, 10000))]:
            if port in self.ports.values():
                continue
            argv = ["dispatcher", "listen", "--port", port, "--status", status]
            log = self._spawn(f"listen-{port}", argv)
            proc = self.procs[-1]
            wait_until(
                lambda log=log, proc=proc: (
                    "listening on" in log.read_text() or proc.poll() is not None
                ),
                "a receiver to listen or exit",
            )
            if "listening on" in log.read_text():
                return port
            assert "address already in use" in log.read_text(), log.read_text()
            self.procs.remove(proc)  # it exited: nothing to stop
        raise RuntimeError("no free port between 9100 and 9999")

    def run(self, command: str) -> str:
        """Run one README command once nothing is pending; return its output as shown."""
        self._wait_until_idle()
        for readme_port, port in self.ports.items():
            command = command.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        output = done.stdout.rstrip("\n")
        for readme_port, port in self.ports.items():
            output = output.replace(f"127.0.0.1:{port}", f"127.0.0.1:{readme_port}")
        return output

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run(
            ["dispatcher", "db", "stop", "--force"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            timeout=60,
        )

    def _spawn(self, name: str, argv: list[str]) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=self.workdir,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log

    def _wait_until_idle(self) -> None:
        async def pending() -> int:
            conn = await asyncpg.connect(self.dsn)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'pending'"
                    )
                )
            finally:
                await conn.close()

        wait_until(lambda: asyncio.run(pending()) == 0, "pending deliveries to finish")


@contextmanager
def session() -> Iterator[Session]:
    with tempfile.TemporaryDirectory(prefix="dispatcher-readme-") as tmp:
        s = Session(Path(tmp))
        try:
            s.start()
            yield s
        finally:
            s.stop()


def write() -> None:
    """Run every console example and put its real output into README.md."""
    text = README.read_text()
    with session() as s:
        new_bodies = []
        for examples in blocks(text):
            for example in examples:
                example.output = s.run(example.command)
            new_bodies.append(render(examples) + "\n")
    bodies = iter(new_bodies)
    README.write_text(BLOCK.sub(lambda m: f"```console\n{next(bodies)}```", text))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's outputs")
    if parser.parse_args().write:
        write()
    else:
        parser.print_help()
