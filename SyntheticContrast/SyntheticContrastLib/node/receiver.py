"""The Storage SCP: accepts CT and Enhanced CT from allowed AE titles and hosts, spools each instance before
answering, and tells the queue when a sender's association ends."""

from __future__ import annotations

import logging
import shutil
import threading
import time

from ..errors import InputError
from . import spool
from .config import NodeConfig
from .queue import SeriesQueue

log = logging.getLogger("synthetic_contrast.node")

STATUS_OK, STATUS_REFUSED_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
STATUS_DATASET_DOES_NOT_MATCH = 0xA900


def event_fields(event: str, **fields) -> dict:
    return {"extra": {"event": event, "fields": fields}}


class Receiver:
    """pynetdicom's server, started in its own threads; ``stop`` shuts it down and closes open associations."""

    def __init__(self, config: NodeConfig, queue: SeriesQueue):
        self.config, self.queue = config, queue
        self._series_of_association: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._server = None
        self._draining = False

    def _application_entity(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage, Verification

        ae = AE(ae_title=self.config.ae_title)
        for sop_class in (CTImageStorage, EnhancedCTImageStorage):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)  # C-ECHO: how a PACS administrator tests the route
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.config.allow)
        ae.maximum_associations = self.config.max_associations
        return ae

    def start(self) -> None:
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_OK),
                    (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_ABORTED, self._on_aborted)]
        self._server = self._application_entity().start_server(
            (self.config.bind_address(), self.config.port), block=False, evt_handlers=handlers, ssl_context=self._ssl_context())

    def _ssl_context(self):
        if not self.config.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.config.tls_ca) if self.config.tls_ca else None)
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        if self.config.tls_ca:
            context.verify_mode = ssl.CERT_REQUIRED  # only senders with a certificate from this CA
        return context

    def stop(self, grace_seconds: float = 0.0) -> int:
        """Refuse new associations, let open ones finish for up to ``grace_seconds``, then close the server.
        Returns how many associations were still open and had to be closed."""
        if self._server is None:
            return 0
        self._draining = True
        deadline = time.monotonic() + grace_seconds
        while self._server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        left = len(self._server.active_associations)
        self._server.shutdown()
        self._server = None
        return left

    def _on_requested(self, event) -> None:
        host = event.assoc.requestor.address
        if self._draining:
            log.warning("refused association", **event_fields("refused", reason="the node is shutting down", host=host,
                                                               calling_ae=event.assoc.requestor.ae_title))
            event.assoc.abort()
            return
        if self.config.allow_hosts and host not in self.config.allow_hosts:
            log.warning("refused host", **event_fields("refused", reason="host not allowed", host=host,
                                                        calling_ae=event.assoc.requestor.ae_title))
            event.assoc.abort()

    def _on_rejected(self, event) -> None:
        calling = event.assoc.requestor.ae_title
        # pynetdicom rejects for its association limit and for the calling AE title alike; an allowed title was
        # rejected for the limit.
        reason = (f"association limit reached (max_associations = {self.config.max_associations})"
                  if calling in self.config.allow else "calling AE title not allowed")
        log.warning("refused association", **event_fields("refused", reason=reason, calling_ae=calling,
                                                           host=event.assoc.requestor.address))

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            spool.check_instance(ds)
        except InputError as exc:
            log.warning("rejected instance", **event_fields("rejected", reason=exc.problem, calling_ae=calling))
            return STATUS_DATASET_DOES_NOT_MATCH
        except Exception as exc:  # the dataset could not even be decoded
            log.warning("rejected instance", **event_fields("rejected", reason=f"cannot be decoded: {exc}", calling_ae=calling))
            return STATUS_CANNOT_UNDERSTAND
        free_mib = shutil.disk_usage(self.config.spool).free / 2**20
        if free_mib < self.config.min_free_mib:
            log.error("spool full", **event_fields("spool_full", free_mib=round(free_mib), min_free_mib=self.config.min_free_mib,
                                                   sop_instance_uid=str(ds.SOPInstanceUID)))
            return STATUS_REFUSED_OUT_OF_RESOURCES
        try:
            path = spool.store_instance(self.config.spool, ds)
            self.queue.record_instance(str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), path.parent, calling,
                                       str(ds.SOPInstanceUID), patient_id=str(ds.get("PatientID", "")),
                                       accession=str(ds.get("AccessionNumber", "")))
        except Exception as exc:  # a spool or queue that cannot take it: not acknowledged, so the sender keeps it
            log.error("spool write failed", **event_fields("spool_error", reason=f"{type(exc).__name__}: {exc}",
                                                           sop_instance_uid=str(ds.SOPInstanceUID)))
            return STATUS_REFUSED_OUT_OF_RESOURCES
        with self._lock:
            self._series_of_association.setdefault(id(event.assoc), set()).add(str(ds.SeriesInstanceUID))
        return STATUS_OK

    def _take_series(self, event) -> set[str]:
        with self._lock:
            return self._series_of_association.pop(id(event.assoc), set())

    def _on_released(self, event) -> None:
        series = self._take_series(event)
        if self.config.complete_on_release:
            for uid in self.queue.complete(series):
                log.info("series complete", **event_fields("series_complete", series_uid=uid, reason="association released"))

    def _on_aborted(self, event) -> None:
        # An aborted transfer may be incomplete: held until its quiet time, then failed with this reason, unless a
        # later association that sends to the series is released.
        series = self._take_series(event)
        if series:
            self.queue.mark_incomplete(series, f"the association from {event.assoc.requestor.ae_title} was aborted "
                                               "before it was released")
            for uid in series:
                log.warning("association aborted", **event_fields("aborted", series_uid=uid,
                                                                  calling_ae=event.assoc.requestor.ae_title))
