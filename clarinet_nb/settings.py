"""Settings read from the environment (prefix ``CLARINET_``) or a ``.env`` file.

Every field can be overridden with an environment variable named after it,
for example ``CLARINET_PACS_HOST=pacs.example.org`` or ``CLARINET_DIMSE_TIMEOUT=120``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clarinet_nb.dicom.params import (
    check_ae_param,
    check_ip,
    check_max_pdu,
    check_seconds,
    parse_size,
)

__all__ = ["Settings", "settings"]


class Settings(BaseSettings):
    """Local DICOM identity, the default PACS, timeouts and limits."""

    model_config = SettingsConfigDict(
        env_prefix="CLARINET_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    @field_validator("dicom_aet", "pacs_aet")
    @classmethod
    def _aet(cls, value: Any, info: ValidationInfo) -> str:
        return check_ae_param(str(info.field_name), value)

    @field_validator("dicom_ip")
    @classmethod
    def _ip(cls, value: Any) -> str | None:
        return None if value is None or value == "" else check_ip("dicom_ip", value)

    @field_validator(
        "connect_timeout", "acse_timeout", "dimse_timeout", "network_timeout", "cancel_timeout"
    )
    @classmethod
    def _seconds(cls, value: float) -> float:
        return check_seconds("timeout", value)

    @field_validator("dicom_max_pdu")
    @classmethod
    def _max_pdu(cls, value: int) -> int:
        return check_max_pdu("dicom_max_pdu", value)

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, value: str) -> str:
        parse_size(value, "memory_limit")
        return value

    # Our own Application Entity (calling AE title; Storage SCP for C-MOVE).
    dicom_aet: str = Field("CLARINET", description="Our AE title (calling AET, move destination).")
    dicom_port: int = Field(
        11112, ge=1, le=65535, description="Port of our Storage SCP for C-MOVE."
    )
    dicom_ip: str | None = Field(
        None, description="Address our Storage SCP binds to (None: all interfaces)."
    )
    dicom_max_pdu: int = Field(
        16384, description="Max PDU we announce, sending and receiving (0 = unlimited)."
    )

    # The default PACS.
    pacs_aet: str = Field("ORTHANC", description="Called AE title of the default PACS.")
    pacs_host: str = Field("localhost", description="Host name or address of the default PACS.")
    pacs_port: int = Field(4242, ge=1, le=65535, description="DICOM port of the default PACS.")

    # Timeouts, in seconds.
    connect_timeout: float = Field(10.0, gt=0, description="TCP connection to the peer.")
    acse_timeout: float = Field(30.0, gt=0, description="Association negotiation and release.")
    dimse_timeout: float = Field(
        120.0, gt=0, description="Waiting for one DIMSE response or sub-operation."
    )
    network_timeout: float = Field(120.0, gt=0, description="Idle network connection.")
    cancel_timeout: float = Field(
        10.0, gt=0, description="Waiting for the peer to honour C-CANCEL before aborting."
    )

    # Limits.
    memory_limit: str = Field(
        "2GB", description="Most an in-memory pull may bring (e.g. '500MB', '8GB')."
    )
    max_associations: int = Field(
        4, ge=1, le=64, description="Concurrent associations one client opens at most."
    )
    retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries of a query or retrieve unit after a transient network failure.",
    )

    # DICOM TLS for the default PACS (see README "DICOM TLS"); unset: plain TCP.
    tls_ca_file: str | None = Field(
        None, description="PEM file of the CA(s) that signed the PACS's certificate."
    )
    tls_cert_file: str | None = Field(None, description="PEM file of our own certificate.")
    tls_key_file: str | None = Field(
        None, description="PEM file of our unencrypted private key (owner-readable only)."
    )
    tls_verify_peer: bool = Field(
        True, description="Verify the peer's certificate against tls_ca_file."
    )
    tls_check_hostname: bool = Field(
        True, description="The PACS certificate must name pacs_host (an IP needs an IP SAN)."
    )

    # Who may C-STORE to our Storage SCP during a C-MOVE (besides the PACS moved from).
    move_allowed_aets: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Extra calling AE titles admitted during a C-MOVE, for a PACS that "
        "sends from another AE title (comma-separated or a JSON list).",
    )
    move_check_host: bool = Field(
        True,
        description="During a C-MOVE admit only senders from the PACS's address(es).",
    )

    # Speed.
    fast_path: bool = Field(
        True,
        description="Receive C-GET instances, and C-MOVE instances on our Storage SCP, on "
        "the lean path (raw PDUs, no pynetdicom or pydicom objects per instance); False: "
        "pynetdicom's own receive path.",
    )

    lean_plan: bool = Field(
        True,
        description="Plan a study or series retrieve from the PACS's study and series "
        "instance counts when it answers them (no IMAGE level listing before the transfer; "
        "only series that come up short are listed after it); False: list every instance "
        "first.",
    )

    @field_validator("move_allowed_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("move_allowed_aets", mode="after")
    @classmethod
    def _check_aets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from clarinet_nb.dicom.values import check_ae_title

        return tuple(check_ae_title(aet) for aet in value)


settings = Settings()
