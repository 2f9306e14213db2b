"""A libvirt daemon of the caller's own, serving only libvirt's test ("mock") driver.

The test driver keeps its domains in the memory of the process that opened ``test:///default``,
so a worker and a test (or two pool processes of one worker) never see each other's domains.
Served by a daemon, as ``test+unix:///default?socket=...``, every client shares one driver
state, as clients of one host's libvirtd do. The daemon loads no hypervisor driver
(``LIBVIRT_DRIVER_DIR`` is an empty directory: no QEMU, no system user it would need), listens
on a UNIX socket in ``workdir`` only (no TCP, no TLS), and keeps its pid file and log there.
The test driver drops its state when its last client disconnects, as a process's own
``test:///default`` does, so the daemon object holds one connection open while it runs: the
domains last from one client's connection to the next, as a real host's do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drydock import localservers
from testkit.processes import stop_process_group

LIBVIRTD = "libvirtd"


def missing() -> str | None:
    """Why no daemon can run here (None when one can)."""
    if shutil.which(LIBVIRTD) is None:
        return "libvirtd (Debian: libvirt-daemon)"
    return None


@dataclass
class LibvirtDaemon:
    workdir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _holder: Any = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The test driver, through this daemon."""
        return f"test+unix:///default?socket={self.socket}"

    def start(self) -> None:
        run = self.workdir / "run"
        drivers = self.workdir / "no-drivers"
        run.mkdir(parents=True, exist_ok=True)
        drivers.mkdir(exist_ok=True)
        config = self.workdir / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{run}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.workdir / "libvirtd.log"}"\n'
        )
        with open(self.workdir / "libvirtd.out", "ab") as log:
            self._proc = subprocess.Popen(
                [LIBVIRTD, "--config", str(config), "--pid-file", str(self.workdir / "pid")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)},
            )

        def answers() -> bool:
            import libvirt

            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self._proc.returncode}")
            if not self.socket.exists():
                return False
            connection = libvirt.open(self.uri)
            try:
                return bool(connection.getType() == "TEST")
            finally:
                connection.close()

        try:
            localservers.wait_for(answers, 15, "libvirtd")
        except localservers.ServerUnavailableError:
            self.stop()
            out = (self.workdir / "libvirtd.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"libvirtd did not start:\n{out}") from None
        import libvirt

        self._holder = libvirt.open(self.uri)

    def stop(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.close()
        proc, self._proc = self._proc, None
        stop_process_group(proc)
