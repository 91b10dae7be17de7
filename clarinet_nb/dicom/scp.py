"""Our Storage SCP for C-MOVE: one listener per port, shared by concurrent moves.

A C-MOVE makes the PACS open its own association to us and C-STORE the
instances there.  ``receiving()`` starts the listener on first use, routes each
incoming instance to the move that expects it, and stops the listener (so the
port is free again) when the last move using it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from clarinet_nb.dicom.association import Timeouts, tune_instance_connection
from clarinet_nb.dicom.contexts import scp_storage_contexts
from clarinet_nb.dicom.handlers import StorageHandler, store_request
from clarinet_nb.errors import LocalPortError

__all__ = ["receiving"]

logger = logging.getLogger("clarinet_nb")

NOT_EXPECTED = 0xA700  # "Refused: out of resources": no move is waiting for this
_POLL = 0.02


@dataclass
class _Route:
    handler: StorageHandler
    expected: frozenset[str] | None


@dataclass
class _Listener:
    server: ThreadedAssociationServer
    aet: str
    routes: list[_Route] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def dispatch(self, event: evt.Event) -> int:
        """Route one C-STORE to the move expecting it."""
        sop_uid = str(store_request(event).AffectedSOPInstanceUID or "")
        with self.lock:
            routes = list(self.routes)
        chosen = next((r for r in routes if r.expected and sop_uid in r.expected), None)
        if chosen is None:
            open_routes = [r for r in routes if r.expected is None]
            chosen = open_routes[0] if open_routes else (routes[0] if len(routes) == 1 else None)
        if chosen is None:
            logger.warning("refused an instance no C-MOVE was expecting")
            return NOT_EXPECTED
        return chosen.handler(event)


_listeners: dict[tuple[str, int], _Listener] = {}
_registry_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _scp_ae(aet: str, max_pdu: int, timeouts: Timeouts, extra_classes: frozenset[str]) -> AE:
    """The AE of our Storage SCP, built once per configuration (setting its ~170
    supported contexts takes ~0.08 s, which every C-MOVE would otherwise pay)."""
    ae = AE(ae_title=aet)
    ae.supported_contexts = scp_storage_contexts(extra_classes)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.require_called_aet = True
    return ae


def _start(
    aet: str,
    ip: str,
    port: int,
    max_pdu: int,
    timeouts: Timeouts,
    extra_classes: frozenset[str],
    ssl_context: ssl.SSLContext | None = None,
) -> _Listener:
    ae = _scp_ae(aet, max_pdu, timeouts, extra_classes)
    holder: dict[str, _Listener] = {}

    def dispatch(event: evt.Event) -> int:
        return holder["listener"].dispatch(event)

    try:
        server = ae.make_server(
            (ip, port),
            evt_handlers=[
                (evt.EVT_C_STORE, dispatch),
                (evt.EVT_CONN_OPEN, tune_instance_connection),
            ],
            server_class=ThreadedAssociationServer,
            ssl_context=ssl_context,
        )
    except OSError as exc:
        raise LocalPortError(
            f"our Storage SCP could not listen on {ip or '*'}:{port} for C-MOVE: {exc}. "
            "Free the port or set CLARINET_DICOM_PORT to one the PACS knows us by."
        ) from exc
    # pynetdicom's start_server polls for shutdown every 0.5 s; every C-MOVE would
    # pay that when the listener stops, so we run the loop with a short poll.
    ae._servers.append(server)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL},
        name=f"clarinet-scp-{port}",
        daemon=True,
    )
    thread.start()
    listener = _Listener(server=server, aet=aet)
    holder["listener"] = listener
    logger.info(
        "Storage SCP %s listening on port %d%s", aet, port, " (TLS)" if ssl_context else ""
    )
    return listener


def _stop(listener: _Listener) -> None:
    server = listener.server
    for assoc in list(server.active_associations):
        with contextlib.suppress(Exception):
            assoc.abort()
    server.shutdown()
    logger.info("Storage SCP on port %d stopped", server.server_address[1])


@contextlib.contextmanager
def receiving(
    handler: StorageHandler,
    *,
    aet: str,
    port: int,
    ip: str | None = None,
    max_pdu: int = 16384,
    timeouts: Timeouts | None = None,
    expected: frozenset[str] | None = None,
    extra_classes: frozenset[str] = frozenset(),
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[None]:
    """Receive C-STOREs for one C-MOVE into ``handler`` while the block runs.

    ``ssl_context`` (a C-MOVE over TLS, see :func:`clarinet_nb.dicom.tls.scp_context`)
    makes the listener speak DICOM TLS only.
    """
    key = (ip or "", port)
    route = _Route(handler=handler, expected=expected)
    with _registry_lock:
        listener = _listeners.get(key)
        if listener is not None and listener.aet != aet:
            raise LocalPortError(f"port {port} already serves C-MOVEs as {listener.aet}, not {aet}")
        if listener is not None and (listener.server.ssl_context is None) != (ssl_context is None):
            served, wanted = ("plain", "TLS") if ssl_context else ("TLS", "plain")
            raise LocalPortError(
                f"port {port} already serves {served} C-MOVEs; a {wanted} C-MOVE cannot share "
                "it: run them one after the other or use another scp_port"
            )
        if listener is None:
            listener = _start(
                aet, key[0], port, max_pdu, timeouts or Timeouts(), extra_classes, ssl_context
            )
            _listeners[key] = listener
        with listener.lock:
            listener.routes.append(route)
    try:
        yield
    finally:
        with _registry_lock:
            with listener.lock:
                listener.routes.remove(route)
                idle = not listener.routes
            if idle:
                _listeners.pop(key, None)
                _stop(listener)
