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
#: DICOM PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control characters.
AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")
LOOPBACK = "127.0.0.1"


@dataclass
class NodeConfig:
    ae_title: str = "SYNTHCONTRAST"
    port: int = 11112
    #: Address to listen on. None: loopback unless allow_hosts names hosts, which then may reach it on every address.
    bind: str | None = None
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
    #: An incomplete series (its association was aborted) is failed at its quiet time; with this, it is synthesised
    #: from what arrived and sent with an INCOMPLETE INPUT SERIES warning in every instance's ImageComments.
    send_incomplete: bool = False
    max_attempts: int = 5
    retry_backoff_seconds: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: Associations served at once; one more is refused (and logged as such).
    max_associations: int = 10
    #: On SIGTERM, open associations may finish for this long before they are closed.
    shutdown_grace_seconds: float = 30.0
    #: Sent series' inputs and results are deleted this long after they were sent (0 keeps them for ever).
    retention_hours: float = 72.0
    #: Below this much free disk in the spool, instances are refused with 0xA700 (out of resources), never half kept.
    min_free_mib: float = 512.0
    #: The most host memory one series may take at its peak, as the planner estimates it; a series that would need
    #: more is failed with the figures, before synthesis. 0: what the host has available when the series starts.
    max_memory_mib: float = 0.0

    def bind_address(self) -> str:
        if self.bind:
            return self.bind
        return "0.0.0.0" if self.allow_hosts else LOOPBACK

    def destination_parts(self) -> tuple[str, str, int] | None:
        if not self.destination:
            return None
        match = DESTINATION.match(self.destination)
        return match["ae"], match["host"], int(match["port"])

    def check(self, where="configuration") -> "NodeConfig":
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not a TCP port")
        if not AE_TITLE.match(self.ae_title):
            problems.append(f"AE title {self.ae_title!r} must have 1 to 16 characters, none a backslash or control character")
        bad = [ae for ae in self.allow if not AE_TITLE.match(ae)]
        if bad:
            problems.append(f"allow: {', '.join(map(repr, bad))} not AE title(s) of 1 to 16 characters")
        if self.destination and not DESTINATION.match(self.destination):
            problems.append(f"destination {self.destination!r} is not AE@HOST:PORT")
        if not (self.destination or self.stow_url):
            problems.append("no destination: give --destination AE@HOST:PORT or stow_url")
        if not self.allow:
            problems.append("no calling AE title is allowed (--allow AE): every sender would be refused")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("TLS needs both tls_cert and tls_key")
        if self.quiet_seconds <= 0 or self.max_attempts < 1 or self.samples < 1 or self.max_associations < 1:
            problems.append("quiet_seconds must be > 0, max_attempts, samples and max_associations >= 1")
        if min(self.retention_hours, self.min_free_mib, self.shutdown_grace_seconds, self.max_memory_mib) < 0:
            problems.append("retention_hours, min_free_mib, shutdown_grace_seconds and max_memory_mib must be >= 0")
        if problems:
            raise InputError(where, "; ".join(problems))
        return self


PATH_FIELDS = {"spool", "model", "tls_cert", "tls_key", "tls_ca"}
#: The type each setting must have in the TOML file: a value of another type is refused by name, never coerced
#: (``allow = "PACS"`` would otherwise be the AE titles P, A, C and S).
LIST_FIELDS = {"allow", "allow_hosts", "devices"}
BOOL_FIELDS = {"strict", "complete_on_release", "send_incomplete"}
INT_FIELDS = {"port", "samples", "max_attempts", "max_associations"}
FLOAT_FIELDS = {"quiet_seconds", "retry_backoff_seconds", "shutdown_grace_seconds", "retention_hours", "min_free_mib",
                "max_memory_mib"}


def _type_problem(key: str, value) -> str | None:
    if key in LIST_FIELDS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{key} must be a list of strings, like {key} = [\"PACS\"], not {value!r}"
    elif key in BOOL_FIELDS:
        if not isinstance(value, bool):
            return f"{key} must be true or false, not {value!r}"
    elif key in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} must be a whole number, not {value!r}"
    elif key in FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} must be a number, not {value!r}"
    elif value is not None and not isinstance(value, str):
        return f"{key} must be a string, not {value!r}"
    return None


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
        problems = [p for p in (_type_problem(k, v) for k, v in values.items()) if p]
        if problems:
            raise InputError(path, "; ".join(problems))
    values.update({k: v for k, v in overrides.items() if v is not None and v != []})
    for key in PATH_FIELDS & set(values):
        values[key] = Path(values[key])
    return NodeConfig(**values).check(path or "command line")
