"""Human-readable DIMSE status codes."""

from __future__ import annotations

__all__ = ["describe"]

_KNOWN: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0110: "Failure: processing failure",
    0x0122: "Failure: SOP class not supported",
    0x0124: "Failure: not authorised",
    0x0211: "Failure: unrecognised operation",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Failure: identifier does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures or warnings",
    0xFE00: "Cancel: matching or sub-operations terminated",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}


def describe(code: int | None) -> str:
    """``0xA801 (Refused: move destination unknown)``-style text for a status."""
    if code is None:
        return "no status"
    text = _KNOWN.get(code)
    if text is None:
        if 0xA000 <= code <= 0xAFFF:
            text = "Failure: refused"
        elif 0xC000 <= code <= 0xCFFF:
            text = "Failure: unable to process"
        elif 0xB000 <= code <= 0xBFFF:
            text = "Warning"
        else:
            text = "unknown status"
    return f"0x{code:04X} ({text})"
