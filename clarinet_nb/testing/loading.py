"""Load DICOM files into a test peer with plain pynetdicom C-STORE."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, build_context
from pynetdicom.presentation import PresentationContext

from clarinet_nb.dicom.association import open_association
from clarinet_nb.dicom.models import DicomNode
from clarinet_nb.dicom.tls import TLSConfig
from clarinet_nb.errors import DicomError

__all__ = ["MAX_CONTEXTS", "store_files"]

LOGGER = logging.getLogger(__name__)

#: Presentation contexts per association (pynetdicom's hard limit is 128).
MAX_CONTEXTS = 120

_WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})


@contextmanager
def _send_raw_files() -> Iterator[None]:
    """Make ``send_c_store(path)`` stream the file's encoded bytes unchanged."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _context_key(path: Path) -> tuple[str, str]:
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _batches(
    keyed: Sequence[tuple[tuple[str, str], Path]],
) -> list[tuple[list[PresentationContext], list[Path]]]:
    """Split files into groups that each need at most MAX_CONTEXTS contexts."""
    order: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], list[Path]] = {}
    for key, path in keyed:
        if key not in by_key:
            order.append(key)
            by_key[key] = []
        by_key[key].append(path)
    batches: list[tuple[list[PresentationContext], list[Path]]] = []
    for start in range(0, len(order), MAX_CONTEXTS):
        keys = order[start : start + MAX_CONTEXTS]
        contexts = [build_context(sop, [ts]) for sop, ts in keys]
        files = [p for k in keys for p in by_key[k]]
        batches.append((contexts, files))
    return batches


def store_files(
    aet: str,
    host: str,
    port: int,
    paths: Iterable[Path | str],
    calling_aet: str = "LOADER",
    tls: TLSConfig | None = None,
) -> int:
    """C-STORE every file in ``paths`` to the SCP ``aet`` at ``host:port``.

    Each file is sent in its own transfer syntax (its raw encoded bytes), over
    one association per group of at most :data:`MAX_CONTEXTS` distinct
    (SOP class, transfer syntax) pairs. Returns the number of files stored;
    raises :class:`RuntimeError` if an association fails or any store does
    not end with a success or warning status.  ``tls``: over DICOM TLS.
    """
    keyed = [(_context_key(Path(p)), Path(p)) for p in paths]
    stored = 0
    failures: list[str] = []
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    with _send_raw_files():
        for contexts, files in _batches(keyed):
            try:
                # our association: reactor parked (pynetdicom's own thread otherwise steals
                # a C-STORE response now and then), TCP_NODELAY set
                assoc = open_association(
                    ae,
                    DicomNode(aet=aet, host=host, port=port, tls=tls),
                    contexts=contexts,
                    purpose="C-STORE load",
                    carries_instances=True,
                )
            except DicomError as exc:
                raise RuntimeError(
                    f"C-STORE association {calling_aet}->{aet}@{host}:{port} failed: {exc}"
                ) from exc
            try:
                for msg_id, path in enumerate(files, start=1):
                    try:
                        status = assoc.send_c_store(path, msg_id=msg_id % 65536)
                    except ValueError as exc:  # context rejected by the peer
                        failures.append(f"{path.name}: {exc}")
                        continue
                    code = status.get("Status")
                    if code == 0x0000 or code in _WARNING_STATUSES:
                        stored += 1
                    else:
                        shown = "none" if code is None else f"0x{int(code):04X}"
                        failures.append(f"{path.name}: status {shown}")
            finally:
                if assoc.is_established:
                    assoc.release()
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(keyed)} C-STOREs to {aet} failed: " + "; ".join(failures[:10])
        )
    LOGGER.info("stored %d files to %s@%s:%d", stored, aet, host, port)
    return stored
