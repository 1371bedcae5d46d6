"""Run a private Mosquitto broker for tests and demos.

Starts ``mosquitto -c <generated config>`` on a free loopback port (never the
system broker on 1883), optionally with a password file, and stops it by PID.
The broker can be stopped and started again on the same port, which is how
tests produce a real broker outage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["Mosquitto", "MosquittoMissing", "free_port"]


class MosquittoMissing(RuntimeError):
    """The ``mosquitto`` binary is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A Mosquitto process with a generated configuration.

    Args:
        port: loopback port (default: a free one).
        users: ``{username: password}``; when given, anonymous access is off.
        extra_config: more lines for the config file (TLS listeners, ACLs, ...).
        workdir: where the config, password file and log go (default: a temp dir).
        persistence: keep sessions and queued messages across a restart (saved
            in ``workdir`` when the broker stops).
        tls: ``(ca file, server certificate, server key)``: the listener speaks
            TLS only (``mqtts://``).
        require_certificate: with ``tls``, clients must present a certificate
            signed by the CA.
        acl_file: a Mosquitto ACL file to enforce.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        users: Mapping[str, str] | None = None,
        extra_config: str = "",
        workdir: str | Path | None = None,
        persistence: bool = False,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
        require_certificate: bool = False,
        acl_file: str | Path | None = None,
    ) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
            None,
        )
        if binary is None:
            raise MosquittoMissing(
                "the `mosquitto` binary is not installed; install it (Debian/Ubuntu: "
                "`apt install mosquitto mosquitto-clients`) to run the broker-backed tests"
            )
        self.binary = binary
        self.port = port or free_port()
        self.users = dict(users or {})
        self.extra_config = extra_config
        self.persistence = persistence
        self.tls = tls
        self.require_certificate = require_certificate
        self.acl_file = acl_file
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mapperkit-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(
                ["persistence true", f"persistence_location {self.workdir}/"]
                if self.persistence
                else ["persistence false"]
            ),
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            "max_inflight_messages 0",
            # Root would be dropped to the `mosquitto` user, which may not read our files.
            "user root" if os.geteuid() == 0 else "",
        ]
        if self.users:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                )
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.append(self.extra_config)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(line for line in lines if line) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return
        conf = self._write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.02)
            else:
                return
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for the port to close."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    @contextlib.contextmanager
    def running_broker(cls, **kwargs: object) -> Iterator[Mosquitto]:
        broker = cls(**kwargs)  # type: ignore[arg-type]
        with broker:
            yield broker
