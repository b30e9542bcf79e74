"""The node's settings: a TOML file (``--config``) with command-line flags over it, checked before anything starts."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

try:
    import tomllib
except ImportError:  # Python < 3.11: the same parser, from PyPI (the 'node' extra)
    import tomli as tomllib

DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@dataclass
class NodeConfig:
    ae_title: str = "SYNTHCONTRAST"
    port: int = 11112
    bind: str = "0.0.0.0"
    spool: Path = Path("synthetic-contrast-spool")
    #: Calling AE titles allowed to send; everyone else is refused at association. Empty refuses all.
    allow: list[str] = field(default_factory=list)
    #: Hosts (IP addresses) allowed to connect; empty allows any host whose AE title is allowed.
    allow_hosts: list[str] = field(default_factory=list)
    #: Where results go: "AE@HOST:PORT" (C-STORE), and/or a DICOMweb base URL (STOW-RS).
    destination: str | None = None
    stow_url: str | None = None
    model: Path | None = None
    #: One worker per device ("auto", "cpu", "cuda:0", ...).
    devices: list[str] = field(default_factory=lambda: ["auto"])
    samples: int = 1
    strict: bool = False
    #: A series is complete this long after its last instance, or when its association is released.
    quiet_seconds: float = 30.0
    complete_on_release: bool = True
    max_attempts: int = 5
    retry_backoff_seconds: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    def destination_parts(self) -> tuple[str, str, int] | None:
        if not self.destination:
            return None
        match = DESTINATION.match(self.destination)
        return match["ae"], match["host"], int(match["port"])

    def check(self, where="configuration") -> "NodeConfig":
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not a TCP port")
        if not 0 < len(self.ae_title) <= 16:
            problems.append(f"AE title {self.ae_title!r} must have 1 to 16 characters")
        if self.destination and not DESTINATION.match(self.destination):
            problems.append(f"destination {self.destination!r} is not AE@HOST:PORT")
        if not (self.destination or self.stow_url):
            problems.append("no destination: give --destination AE@HOST:PORT or stow_url")
        if not self.allow:
            problems.append("no calling AE title is allowed (--allow AE): every sender would be refused")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("TLS needs both tls_cert and tls_key")
        if self.quiet_seconds <= 0 or self.max_attempts < 1 or self.samples < 1:
            problems.append("quiet_seconds must be > 0, max_attempts and samples >= 1")
        if problems:
            raise InputError(where, "; ".join(problems))
        return self


PATH_FIELDS = {"spool", "model", "tls_cert", "tls_key", "tls_ca"}


def load_config(path: Path | None, overrides: dict) -> NodeConfig:
    """The TOML file's values, then every override that is not None; unknown keys are refused by name."""
    values = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(path, f"is not a readable TOML file: {exc}") from exc
        known = {f.name for f in dataclasses.fields(NodeConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(path, f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    for key in PATH_FIELDS & set(values):
        values[key] = Path(values[key])
    return NodeConfig(**values).check(path or "command line")
