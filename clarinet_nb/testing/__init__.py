"""Integration-test rig for clarinet_nb: real DICOM peers and a synthetic cohort.

- :class:`OrthancServer`, :class:`DcmqrscpServer`: real peers run as child
  processes on free loopback ports, stock or tuned (``TCP_NODELAY=1``).
- :func:`generate_cohort`, :func:`generate_bulk`: deterministic DICOM files.
- :func:`store_files`: plain pynetdicom C-STORE loader.
- :class:`Peer`: the read-only view of a peer that tests use.
- :class:`FaultProxy`, :class:`PeerFreezer`: fault injection (cut/stall a
  connection, freeze/kill a peer).
- :class:`OrthancTLS`: DICOM TLS for a test Orthanc; ``clarinet_nb.testing.certs``
  makes the CA and certificates (it needs the ``cryptography`` test dependency).
"""

from clarinet_nb.testing.cohort import Cohort, CohortInstance, generate_bulk, generate_cohort
from clarinet_nb.testing.dcmqrscp import DcmqrscpServer
from clarinet_nb.testing.faults import FaultProxy, PeerFreezer
from clarinet_nb.testing.loading import store_files
from clarinet_nb.testing.orthanc import OrthancServer, OrthancTLS
from clarinet_nb.testing.peer import Peer, PeerProcess, echo
from clarinet_nb.testing.ports import free_port

__all__ = [
    "Cohort",
    "CohortInstance",
    "DcmqrscpServer",
    "FaultProxy",
    "OrthancServer",
    "OrthancTLS",
    "Peer",
    "PeerFreezer",
    "PeerProcess",
    "echo",
    "free_port",
    "generate_bulk",
    "generate_cohort",
    "store_files",
]
