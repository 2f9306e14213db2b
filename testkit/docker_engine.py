"""A Docker engine of the caller's own: a ``dockerd`` (vfs storage by default, no bridge, no
iptables, an empty config file) serving a socket the caller names, with its data and exec roots
in a directory the caller names, stopped by :meth:`DockerEngine.stop` with whatever it left
running or mounted. It needs root and ``/usr/sbin/dockerd``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from drydock import localservers

DOCKERD = "/usr/sbin/dockerd"


@dataclass
class DockerEngine:
    url: str
    directory: Path
    proc: subprocess.Popen[bytes]

    @property
    def exec_root(self) -> Path:
        return self.directory / "exec"

    def log(self) -> str:
        return (self.directory / "dockerd.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop dockerd (which stops its containerd); whatever survives a kill is found by its
        exec root (in containerd's command line) and killed by pid, mounts left are undone."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in _pids_mentioning(str(self.exec_root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount_under(self.directory)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def unmount_under(directory: Path) -> None:
    """Lazily unmount every mount below ``directory``, deepest first."""
    prefix = str(directory.resolve()) + "/"
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def start_dockerd(url: str, directory: Path, *, storage_driver: str = "vfs") -> DockerEngine:
    """A dockerd serving ``url`` (``unix://<path>``) with everything under ``directory``."""
    import docker

    directory.mkdir(parents=True, exist_ok=True)
    # Its own (empty) config file: nothing from /etc/docker/daemon.json applies.
    config = directory / "daemon.json"
    config.write_text("{}\n")
    with open(directory / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            [
                DOCKERD,
                "--config-file",
                str(config),
                f"--storage-driver={storage_driver}",
                "--iptables=false",
                "--bridge=none",
                "--data-root",
                str(directory / "root"),
                "--exec-root",
                str(directory / "exec"),
                "--pidfile",
                str(directory / "dockerd.pid"),
                "-H",
                url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C of the caller reaches the caller, which stops it in order.
            start_new_session=True,
        )
    engine = DockerEngine(url, directory, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}")
        client = docker.APIClient(base_url=url, version="1.41", timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    try:
        localservers.wait_for(answers, 60, "dockerd")
    except localservers.ServerUnavailableError:
        engine.stop()
        raise RuntimeError(f"dockerd did not start:\n{engine.log()[-3000:]}") from None
    return engine
