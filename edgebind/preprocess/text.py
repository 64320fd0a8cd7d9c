"""CLIP BPE text tokenizer: strings to the int64 [N, 77] token-id rows the ImageBind text tower expects.

Numpy and ``regex`` only. ``ftfy`` (the ``text`` extra) repairs mojibake as in the reference; without it the
rest of the cleaning still runs, so plain-text prompts tokenize identically on a device that lacks ftfy.

Row layout: ``<|startoftext|>``, the text's tokens, ``<|endoftext|>``, zero padding. Long texts keep their
first ``context_length - 1`` tokens (SOT included) and end with EOT at index ``context_length - 1``, so the
model's pooling index ``argmax(row)`` is always the EOT position (reference behaviour after its PR #142).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import regex

from .._config import ConfigMixin
from .._io import sha256_file
from .._logging import log_once
from ..errors import CheckpointError, ConfigError, PreprocessError
from ._bpe import EOT_TEXT, SOT_TEXT, BytePairEncoder, load_merges

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49_408
SOT_TOKEN = 49_406
EOT_TOKEN = 49_407
PAD_TOKEN = 0

# CLIP pre-tokenisation: specials, English contractions, letter runs, single digits, runs of other
# non-space characters. Whitespace matches no branch, so it only separates words.
_WORD_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class TextConfig(ConfigMixin):
    """Text preprocessing settings recorded in the bundle manifest.

    ``fix_unicode`` applies ftfy's ``fix_text`` when ftfy is installed (reference behaviour); it is
    skipped, with one debug log line, when ftfy is absent.
    """

    context_length: int = 77
    vocab_file: str = VOCAB_FILENAME
    vocab_sha256: str | None = VOCAB_SHA256
    vocab_size: int = VOCAB_SIZE
    sot_token: int = SOT_TOKEN
    eot_token: int = EOT_TOKEN
    pad_token: int = PAD_TOKEN
    lowercase: bool = True
    fix_unicode: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.context_length, bool) or not isinstance(self.context_length, int) or self.context_length < 3:
            raise ConfigError(
                f"TextConfig.context_length: expected an integer >= 3 (SOT, one token, EOT), got {self.context_length!r}"
            )


_ftfy_fix_text: Callable[[str], str] | None = None
_ftfy_probed = False


def _get_ftfy_fix_text() -> Callable[[str], str] | None:
    """ftfy.fix_text, or None when ftfy is not importable (probed once per process)."""
    global _ftfy_fix_text, _ftfy_probed
    if not _ftfy_probed:
        try:
            import ftfy

            _ftfy_fix_text = ftfy.fix_text
        except ImportError:
            _ftfy_fix_text = None
            log_once(logger, logging.DEBUG, "ftfy is not installed: text cleaning skips mojibake repair "
                     "(pip install 'edgebind[text]' for the reference cleaning)")
        _ftfy_probed = True
    return _ftfy_fix_text


def clean_text(text: str, *, fix_unicode: bool = True, lowercase: bool = True) -> str:
    """Reference cleaning: ftfy fix (if installed), HTML-unescape twice, strip, collapse whitespace, lowercase."""
    if fix_unicode:
        fix = _get_ftfy_fix_text()
        if fix is not None:
            text = fix(text)
    # Twice, so doubly escaped scraped captions ("&amp;lt;") come out as "<".
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


class ClipTokenizer:
    """CLIP byte-level BPE tokenizer. The vocabulary is read (and its sha256 checked) on first use."""

    def __init__(
        self,
        config: TextConfig | None = None,
        *,
        vocab_path: str | Path | None = None,
        cache_size: int = 20_000,
    ):
        self.config = config if config is not None else TextConfig()
        self._vocab_path = Path(vocab_path) if vocab_path is not None else None
        self._cache_size = cache_size
        self._encoder: BytePairEncoder | None = None
        self._lock = threading.Lock()

    @property
    def sot_token(self) -> int:
        return self.config.sot_token

    @property
    def eot_token(self) -> int:
        return self.config.eot_token

    @property
    def vocab_size(self) -> int:
        return len(self._bpe.vocab)

    @property
    def vocab_path(self) -> Path:
        if self._vocab_path is not None:
            return self._vocab_path
        return Path(str(resources.files("edgebind.preprocess") / "data" / self.config.vocab_file))

    @property
    def _bpe(self) -> BytePairEncoder:
        encoder = self._encoder
        if encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load()
                encoder = self._encoder
        return encoder

    def _load(self) -> BytePairEncoder:
        path = self.vocab_path
        if not path.is_file():
            raise CheckpointError(f"BPE vocabulary file not found: {path}")
        expected = self.config.vocab_sha256
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected.lower():
                raise CheckpointError(f"BPE vocabulary {path}: sha256 is {actual}, expected {expected}")
        encoder = BytePairEncoder(load_merges(path), cache_size=self._cache_size)
        cfg = self.config
        got = (len(encoder.vocab), encoder.token_to_id[SOT_TEXT], encoder.token_to_id[EOT_TEXT])
        if got != (cfg.vocab_size, cfg.sot_token, cfg.eot_token):
            raise CheckpointError(
                f"BPE vocabulary {path}: (vocab_size, sot_token, eot_token) = {got}, "
                f"expected {(cfg.vocab_size, cfg.sot_token, cfg.eot_token)} from TextConfig"
            )
        logger.debug("loaded BPE vocabulary %s (%d tokens)", path, len(encoder.vocab))
        return encoder

    def clean(self, text: str) -> str:
        """Clean one string with this tokenizer's config (see ``clean_text``)."""
        return clean_text(text, fix_unicode=self.config.fix_unicode, lowercase=self.config.lowercase)

    def encode(self, text: str) -> list[int]:
        """Token ids of one string, without SOT/EOT. A literal ``<|endoftext|>`` in the text encodes as EOT."""
        if not isinstance(text, str):
            raise PreprocessError(f"text: expected a str, got {type(text).__name__}")
        return self._encode_clean(self.clean(text), limit=None)

    def _encode_clean(self, text: str, limit: int | None) -> list[int]:
        # ``limit`` stops early on long texts: words are encoded independently, so the first
        # ``limit`` ids do not depend on the rest of the text.
        encode_word = self._bpe.encode_word
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(text):
            ids.extend(encode_word(word))
            if limit is not None and len(ids) >= limit:
                return ids[:limit]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of a token-id sequence (``encode`` output or a ``tokenize`` row).

        SOT is skipped and decoding stops at the first EOT (what follows is padding). Word ends become
        spaces, so punctuation and digits come back space-separated ("a dog." -> "a dog ."); invalid
        UTF-8 from partial byte tokens is replaced with U+FFFD.
        """
        bpe = self._bpe
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
            raise PreprocessError(f"ids: expected a 1-D sequence of integer token ids, got shape {arr.shape} "
                                  f"dtype {arr.dtype}")
        body: list[int] = []
        for position, raw in enumerate(arr.tolist()):
            token = int(raw)
            if not 0 <= token < len(bpe.vocab):
                raise PreprocessError(f"ids[{position}]: token id {token} is outside [0, {len(bpe.vocab)})")
            if token == self.eot_token:
                break
            if token != self.sot_token:
                body.append(token)
        return bpe.decode_bytes(body).decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token rows, int64 [N, context_length]: SOT, tokens, EOT, zero padding (EOT kept when truncating)."""
        length = self.config.context_length if context_length is None else context_length
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 3:
            raise PreprocessError(f"context_length: expected an integer >= 3 (SOT, one token, EOT), got {length!r}")
        length = int(length)
        items = _as_text_list(texts)
        rows = np.full((len(items), length), self.config.pad_token, dtype=np.int64)
        for i, text in enumerate(items):
            ids = self._encode_clean(self.clean(text), limit=length - 2)
            rows[i, 0] = self.sot_token
            rows[i, 1 : len(ids) + 1] = ids
            rows[i, len(ids) + 1] = self.eot_token
        return rows


def _as_text_list(texts: object) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise PreprocessError(f"texts: expected a str or a list/tuple of str, got {type(texts).__name__}")
    if not texts:
        raise PreprocessError("texts: expected at least one string, got an empty sequence")
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise PreprocessError(f"texts[{i}]: expected a str, got {type(item).__name__}")
    return list(texts)


@functools.lru_cache(maxsize=8)
def tokenizer_for(config: TextConfig) -> ClipTokenizer:
    """A shared tokenizer per distinct ``TextConfig`` (each loads its vocabulary once, on first use)."""
    return ClipTokenizer(config)


def default_tokenizer() -> ClipTokenizer:
    """The process-wide tokenizer with the default ``TextConfig``."""
    return tokenizer_for(TextConfig())


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """Tokenize strings into int64 [N, context_length] rows (a single str gives [1, context_length]).

    Each row is SOT, tokens, EOT, zero padding; too-long texts keep their first ``context_length - 1``
    tokens and put EOT last. ``argmax(row)`` is the EOT position the text tower pools at.
    """
    return default_tokenizer()(texts, context_length)


def preprocess(texts: str | Sequence[str], config: TextConfig | None = None) -> np.ndarray:
    """Module contract shared with the other modalities: token rows for ``texts`` under ``config``."""
    return tokenizer_for(config if config is not None else TextConfig())(texts)
