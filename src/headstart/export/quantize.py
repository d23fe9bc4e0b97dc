"""int8 post-training static quantisation (in progress)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.core.errors import HeadstartError


def quantize_checked(
    bundle: Any, fp32: Path, fmt: str, work: Path, info: dict[str, Any], force: bool
) -> Path:
    """The int8 model file (not available yet)."""
    raise HeadstartError("int8 export is not available yet: use --precision fp32 or fp16")
