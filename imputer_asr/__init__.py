"""imputer_asr: speech recognition with the Imputer and a conformer-CTC baseline.

``imputer_asr.load_model(path)`` returns a :class:`~imputer_asr.transcription.transcribe.Transcriber`; it is
imported on first use, so ``import imputer_asr`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imputer_asr.transcription.transcribe import load_model

__all__ = ["load_model", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from imputer_asr.transcription.transcribe import load_model

        return load_model
    raise AttributeError(f"module 'imputer_asr' has no attribute {name!r}")
