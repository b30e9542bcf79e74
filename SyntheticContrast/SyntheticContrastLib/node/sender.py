"""Sending a result series to its destination: C-STORE to a DICOM node, or STOW-RS to a DICOMweb server."""

from __future__ import annotations

from pathlib import Path


class SendError(Exception):
    """The destination did not take the series; the worker retries with backoff."""


def send_cstore(files: list[Path], ae_title: str, destination: tuple[str, str, int], timeout: float = 60) -> int:
    """Every file by C-STORE in one association; returns how many were stored, or raises SendError."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    called, host, port = destination
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise SendError(f"{called}@{host}:{port} refused or did not answer the association")
    try:
        for path in files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{called}@{host}:{port}: no answer to C-STORE of {path.name} (timeout or aborted)")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or warnings the SCP stored it with
                raise SendError(f"{called}@{host}:{port}: C-STORE of {path.name} failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(files)


def echo(ae_title: str, destination: tuple[str, str, int], timeout: float = 10) -> None:
    """C-ECHO the destination, as a PACS administrator tests a route; raises SendError naming it if it does not answer."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    called, host, port = destination
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise SendError(f"destination {called}@{host}:{port} refused or did not answer an association for C-ECHO")
    try:
        status = assoc.send_c_echo()
        if getattr(status, "Status", None) != 0x0000:
            raise SendError(f"destination {called}@{host}:{port} did not answer C-ECHO with success")
    finally:
        if assoc.is_established:
            assoc.release()


def send_stow(files: list[Path], base_url: str, timeout: float = 60) -> int:
    """STOW-RS (DICOM PS3.18): every file in one multipart/related POST to ``<base_url>/studies``."""
    import uuid

    import requests

    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + Path(f).read_bytes() + b"\r\n"
                    for f in files) + b"--" + boundary.encode() + b"--\r\n"
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', "Accept": "application/dicom+json"}
    try:
        response = requests.post(base_url.rstrip("/") + "/studies", data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise SendError(f"STOW-RS to {base_url}: {exc}") from exc
    if response.status_code not in (200, 202):
        raise SendError(f"STOW-RS to {base_url}: HTTP {response.status_code} {response.text[:200]}")
    return len(files)
