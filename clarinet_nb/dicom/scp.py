"""Our Storage SCP for C-MOVE: one listener per port, shared by concurrent moves.

A C-MOVE makes the PACS open its own association to us and C-STORE the
instances there.  ``receiving()`` starts the listener on first use, routes each
incoming instance to the move that expects it, and stops the listener (so the
port is free again) when the last move using it ends, however it ends.

Policy (nothing else gets in):

- an association is accepted only when an open move admits its calling AE
  title and source address (:class:`Admission`: the PACS moved from, plus
  ``move_allowed_aets``); otherwise it is rejected at once (A-ASSOCIATE-RJ,
  permanent, "calling AE title not recognised" or "no reason given" for a
  wrong address) before any dataset is read;
- an instance is kept only by a move it belongs to: its SOP Instance UID is in
  the move's expected set (pre-query), or, without one, the study/series/instance
  UIDs read from the head of the dataset match the request (:class:`Scope`);
  otherwise it is answered ``0x0124`` (Refused: not authorised) and never written;
- every refusal is recorded in the move's ``RetrieveResult.refused``.

With ``settings.fast_path`` (the default) an admitted association's C-STOREs are
received on the lean path (:mod:`clarinet_nb.dicom.fastscp`); both paths hand each
instance to the same policy, :meth:`_Listener.route`.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from clarinet_nb.dicom import fastscp
from clarinet_nb.dicom.association import Timeouts, kill_promptly, tune_instance_connection
from clarinet_nb.dicom.contexts import scp_storage_contexts
from clarinet_nb.dicom.handlers import (
    NOT_AUTHORISED,
    StorageHandler,
    plain_address,
    read_identity,
)
from clarinet_nb.dicom.received import EventInstance, ReceivedInstance
from clarinet_nb.dicom.takeover import DulGate
from clarinet_nb.errors import LocalPortError
from clarinet_nb.settings import settings

__all__ = ["Admission", "Scope", "peer_addresses", "receiving"]

logger = logging.getLogger("clarinet_nb")

_POLL = 0.005
WRONG_AET = "calling AE title not allowed"
WRONG_ADDRESS = "source address not allowed"
NOT_OURS = "not part of this retrieve"
UNREADABLE = "dataset unreadable"


@dataclass(frozen=True)
class Admission:
    """Who may C-STORE to one move: calling AE titles and source addresses."""

    aets: frozenset[str]
    addresses: frozenset[str] | None = None
    """IP addresses the sender must come from; None: any (``move_check_host=False``)."""

    def refusal(self, aet: str, address: str) -> str | None:
        """Why a sender is not admitted, or None when it is."""
        if aet not in self.aets:
            return WRONG_AET
        if self.addresses is not None and plain_address(address) not in self.addresses:
            return WRONG_ADDRESS
        return None


@dataclass(frozen=True)
class Scope:
    """What a move asked for, checked against an instance's own UIDs when no
    pre-query listed the expected SOP Instance UIDs."""

    study_uid: str | None = None
    series_uid: str | None = None
    sop_uids: frozenset[str] = frozenset()
    """Empty: any instance of the study/series."""

    def admits(self, sop_uid: str, identity: tuple[str, str, str]) -> bool:
        """True when the instance (study, series, sop read from it) belongs here."""
        study, series, own_sop = identity
        if own_sop != sop_uid:  # the command and the dataset disagree: forged or broken
            return False
        if self.study_uid and study != self.study_uid:
            return False
        if self.series_uid and series != self.series_uid:
            return False
        return not self.sop_uids or sop_uid in self.sop_uids


def peer_addresses(host: str, connected: str | None = None, timeout: float = 5.0) -> frozenset[str]:
    """The IP addresses ``host`` stands for (an IP itself, or what it resolves to
    within ``timeout``), plus ``connected``, the address our association reached."""
    found = {plain_address(connected)} if connected else set()
    try:
        found.add(str(ipaddress.ip_address(host.strip("[]"))))
        return frozenset(found)
    except ValueError:
        pass
    box: list[str] = []

    def resolve() -> None:
        with contextlib.suppress(OSError, UnicodeError):
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            box.extend(plain_address(str(info[4][0])) for info in infos)

    thread = threading.Thread(target=resolve, name="clarinet-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        logger.debug("resolving the PACS host for the C-MOVE sender check timed out")
    else:
        found.update(box)
    return frozenset(found)


@dataclass
class _Route:
    handler: StorageHandler
    expected: frozenset[str] | None
    admission: Admission
    scope: Scope | None


@dataclass
class _Listener:
    server: ThreadedAssociationServer
    aet: str
    routes: list[_Route] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    timeouts: Timeouts = field(default_factory=Timeouts)
    gates: weakref.WeakKeyDictionary[Association, DulGate] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    """Associations admitted for the lean path (fastscp.py), until established."""

    def _open_routes(self) -> list[_Route]:
        with self.lock:
            return list(self.routes)

    def admit(self, event: evt.Event) -> None:
        """EVT_REQUESTED: reject an association no open move admits, before negotiation."""
        assoc = event.assoc
        aet = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
        try:
            address = plain_address(assoc.requestor.address)
        except ValueError:
            address = ""
        routes = self._open_routes()
        reasons = [r.admission.refusal(aet, address) for r in routes]
        if routes and None in reasons:
            assoc.kill = functools.partial(kill_promptly, assoc)  # type: ignore[method-assign]
            if settings.fast_path:  # the lean path takes over once the AC is sent
                self.gates[assoc] = fastscp.arm(assoc)
            return
        reason = WRONG_ADDRESS if WRONG_ADDRESS in reasons else WRONG_AET
        for route in routes:
            route.handler.refuse(None, reason, None, calling_aet=aet, address=address)
        if not routes:
            logger.warning(
                "refused an association from AE %r at %s: no C-MOVE running", aet, address
            )
        # permanent, by the service user: calling AE title not recognised / no reason given
        assoc.acse.send_reject(0x01, 0x01, 0x03 if reason == WRONG_AET else 0x01)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def dispatch(self, event: evt.Event) -> int:
        """EVT_C_STORE (pynetdicom's receive path): see :meth:`route`."""
        return self.route(EventInstance(event))

    def route(self, inst: ReceivedInstance) -> int:
        """Hand one received instance to the move it belongs to, or refuse it (both
        receive paths); returns the C-STORE status."""
        sop_uid = inst.sop_instance_uid
        aet, address = inst.sender_aet, inst.sender_address
        routes = [r for r in self._open_routes() if r.admission.refusal(aet, address) is None]
        if not routes:
            logger.warning(
                "refused an instance from AE %r at %s: no C-MOVE admits it", aet, address
            )
            return NOT_AUTHORISED
        listed = [r for r in routes if r.expected is not None and sop_uid in r.expected]
        if listed:
            fresh = [r for r in listed if not r.handler.has(sop_uid)]
            return (fresh or listed)[0].handler.receive(inst)
        unlisted = [r for r in routes if r.expected is None and r.scope is not None]
        reason = NOT_OURS
        if unlisted:
            try:
                identity = read_identity(inst)
            except Exception as exc:  # noqa: BLE001 - a hostile dataset must not kill the SCP
                logger.debug("could not read the head of a received dataset: %s", exc)
                reason = UNREADABLE
            else:
                for route in unlisted:
                    if route.scope is not None and route.scope.admits(sop_uid, identity):
                        return route.handler.receive(inst, identity[:2])
        for route in routes:
            route.handler.refuse(inst, reason, NOT_AUTHORISED)
        return NOT_AUTHORISED

    def established(self, event: evt.Event) -> None:
        """EVT_ESTABLISHED: receive on the lean path when :meth:`admit` armed it."""
        gate = self.gates.pop(event.assoc, None)
        if gate is not None:
            fastscp.serve(event.assoc, gate, self.route, self.timeouts)


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

    def admit(event: evt.Event) -> None:
        holder["listener"].admit(event)

    def established(event: evt.Event) -> None:
        holder["listener"].established(event)

    try:
        server = ae.make_server(
            (ip, port),
            evt_handlers=[
                (evt.EVT_REQUESTED, admit),
                (evt.EVT_C_STORE, dispatch),
                (evt.EVT_ESTABLISHED, established),
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
    listener = _Listener(server=server, aet=aet, timeouts=timeouts)
    holder["listener"] = listener
    logger.info("Storage SCP %s listening on port %d%s", aet, port, " (TLS)" if ssl_context else "")
    return listener


#: DUL states of an association whose release is under way (PS3.8 9.2): aborting it
#: then races pynetdicom's own answer (an A-ABORT in Sta13 kills its DUL thread).
_RELEASING = frozenset({"Sta8", "Sta13"})


def _stop(listener: _Listener) -> None:
    server = listener.server
    for assoc in list(server.active_associations):
        if assoc.is_released or assoc.dul.state_machine.current_state in _RELEASING:
            continue  # the peer is releasing it: pynetdicom finishes that on its own
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
    admission: Admission,
    expected: frozenset[str] | None = None,
    scope: Scope | None = None,
    extra_classes: frozenset[str] = frozenset(),
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[None]:
    """Receive C-STOREs for one C-MOVE into ``handler`` while the block runs.

    ``ssl_context`` (a C-MOVE over TLS, see :func:`clarinet_nb.dicom.tls.scp_context`)
    makes the listener speak DICOM TLS only.
    Only senders ``admission`` admits get an association; an instance is kept
    when its SOP Instance UID is in ``expected`` or, when ``expected`` is None,
    when its own UIDs fit ``scope``.  Everything else is refused (see the module).
    """
    key = (ip or "", port)
    route = _Route(handler=handler, expected=expected, admission=admission, scope=scope)
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
