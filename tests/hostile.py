"""Hostile files for the hardening tests (tests/test_hostile_input.py, tests/test_cli_walk.py)."""

import os
import struct
import zlib
from pathlib import Path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of about 60 bytes that declares ``width`` x ``height`` RGB pixels (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def eps_named_png(path: Path) -> Path:
    """PostScript content under an image name: Pillow's EPS plugin would hand it to Ghostscript."""
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n")
    return path


def fake_ghostscript(bin_dir: Path, marker: Path) -> dict:
    """A stand-in ``gs`` that only creates ``marker``; returns the environment that puts it first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 0\n")
    gs.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
