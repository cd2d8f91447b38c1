"""The tracking snippet as served: minified once, gzipped once, with a strong ETag."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import rjsmin

SOURCE = Path(__file__).resolve().parent.parent / "snippet" / "closedloop.js"


@dataclass(frozen=True)
class SnippetAsset:
    """The snippet's bytes, plain and gzipped, and the ETag that names this version."""

    plain: bytes
    gzipped: bytes
    etag: str


def build(source: Path = SOURCE) -> SnippetAsset:
    """Minify and compress the snippet source."""
    minified = rjsmin.jsmin(source.read_text(encoding="utf-8")).encode("utf-8")
    digest = hashlib.sha256(minified).hexdigest()[:20]
    return SnippetAsset(minified, gzip.compress(minified, 9, mtime=0), digest)
