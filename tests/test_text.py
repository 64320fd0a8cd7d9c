"""CLIP BPE tokenizer (edgebind.preprocess.text): reference vectors, agreement with an independent
Rust implementation (instant-clip-tokenizer), cleaning, truncation, decoding and errors."""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import shutil
import sys
import time

import numpy as np
import pytest

from edgebind.errors import CheckpointError, ConfigError, PreprocessError
from edgebind.preprocess import text as text_mod
from edgebind.preprocess._bpe import END_OF_WORD, byte_to_unicode, load_merges
from edgebind.preprocess.text import ClipTokenizer, TextConfig, clean_text, default_tokenizer, preprocess, tokenize

# Typed from data/NOTICE and the research notes, not read from the module under test.
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return default_tokenizer()


def _row(ids: list[int], length: int = 77) -> list[int]:
    return ids + [0] * (length - len(ids))


# ----------------------------------------------------------------------------------------------------------------
# Reference vectors and vocabulary


def test_reference_vector_a_dog(tok):
    out = tokenize(["A dog."])
    assert out.dtype == np.int64 and out.shape == (1, 77)
    assert out[0].tolist() == _row([SOT, 320, 1929, 269, EOT])
    single = tokenize("A dog.")
    assert single.shape == (1, 77) and np.array_equal(single, out)
    assert int(out[0].argmax()) == 4  # pooling index = EOT position


def test_vocab_size_specials_and_file_hash(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_token, tok.eot_token) == (SOT, EOT)
    assert hashlib.sha256(tok.vocab_path.read_bytes()).hexdigest() == VOCAB_SHA256
    bpe = tok._bpe
    assert bpe.vocab[SOT] == "<|startoftext|>" and bpe.vocab[EOT] == "<|endoftext|>"


def test_vocab_layout_bytes_then_word_ends_then_merges(tok):
    vocab = tok._bpe.vocab
    byte_chars = list(byte_to_unicode().values())
    assert sorted(byte_to_unicode()) == list(range(256)) and len(set(byte_chars)) == 256
    assert not any(c.isspace() for c in byte_chars)  # the point of the map: no whitespace inside tokens
    assert vocab[:256] == byte_chars and vocab[256:512] == [c + END_OF_WORD for c in byte_chars]
    assert vocab[0] == "!" and vocab[320] == "a" + END_OF_WORD and byte_to_unicode()[0x20] == "Ġ"
    with gzip.open(tok.vocab_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    first, last = lines[1].split(" "), lines[48894].split(" ")
    assert vocab[512] == "".join(first) and vocab[SOT - 1] == "".join(last)
    assert len(set(vocab)) == 49408


def _textbook_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Oracle: rescan all adjacent pairs, merge every occurrence of the best-ranked one, repeat."""
    while len(symbols) > 1:
        pairs = [p for p in zip(symbols, symbols[1:]) if p in ranks]
        if not pairs:
            break
        first, second = min(pairs, key=ranks.__getitem__)
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                out.append(first + second)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def test_merge_table_only_builds_on_earlier_tokens(tok):
    # The heap merge in _bpe relies on this property of a trained merge table.
    merges = load_merges(tok.vocab_path)
    known = set(byte_to_unicode().values()) | {c + END_OF_WORD for c in byte_to_unicode().values()}
    late = []
    for rank, (a, b) in enumerate(merges):
        if a not in known or b not in known:
            late.append((rank, a, b))
        known.add(a + b)
    assert late == []


def test_heap_merge_equals_textbook_bpe_on_random_words(tok):
    bpe = tok._bpe
    ranks = bpe._ranks
    rng = random.Random(7)
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "aeiou", "ab", "éüñçà", "日本語中文字", "!?.,;:-'\"()"]
    checked = 0
    for n in [1, 2, 3, 5, 8, 13, 40, 120, 400]:
        for alphabet in alphabets:
            word = "".join(rng.choice(alphabet) for _ in range(n))
            symbols = [bpe._byte_map[b] for b in word.encode("utf-8")]
            symbols[-1] += END_OF_WORD
            assert bpe._merge(list(symbols)) == _textbook_bpe(list(symbols), ranks), word
            checked += 1
    assert checked == 54


# ----------------------------------------------------------------------------------------------------------------
# Agreement with instant-clip-tokenizer (Rust). It lowercases but does no ftfy / HTML cleaning, treats a literal
# "<|endoftext|>" in the text as plain characters, returns uint16, and truncates like the reference (EOT last).

HANDWRITTEN = [
    "A dog.", "a photo of a cat", "A photo of a dog sitting on a red couch.", "Two people riding bicycles down a hill",
    "The quick brown fox jumps over the lazy dog!", "a close-up photo of a robot arm picking up a cup",
    "an aerial view of a city at night", "A man in a blue jacket is holding an umbrella in the rain.",
    "kitchen", "sound of rain", "a dog barking", "the engine of a car starting", "birds chirping in the morning",
    "Hello, World!", "Wait... what?!", "(parenthetical) [brackets] {braces}", "semi;colon: and, commas.",
    "e-mail: someone@example.com", "https://example.com/path?query=1&x=2", "#hashtag @mention $100 50% off",
    "quotes 'single' and \"double\"", "a/b\\c|d", "~tilde `backtick` ^caret", "***stars*** ___underscores___",
    "...", "!!!", "?!?!", "-", "--", "a-b-c", "x+y=z", "<html>", "C++ and C#", "rock 'n' roll",
    "1", "42", "3.14159", "2024-06-01", "12:30pm", "1,000,000 people", "room 101", "covid19", "mp3 player", "4K TV",
    "R2-D2 and C-3PO", "version 1.2.3-rc4", "0x1F600", "ISO 8601",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "she'd", "Don't STOP", "IT'S", "o'clock", "rock'n'roll",
    "can't won't shouldn't", "the dog's bone", "James' car",
    "MiXeD CaSe TeXt", "ALL CAPS SENTENCE", "camelCaseWord", "snake_case_word", "PascalCaseWord",
    "café naïve résumé", "Crème brûlée", "façade coöperate", "Ångström", "Straße", "smørrebrød", "Łódź", "İstanbul",
    "niño español", "garçon", "Ελληνικά", "Привет, мир!", "שלום", "مرحبا بالعالم", "नमस्ते", "สวัสดี",
    "日本語のテキスト", "中文文本测试", "한국어 텍스트", "東京タワー", "ひらがな カタカナ",
    "😀", "I love pizza 🍕!", "👍🏽 thumbs up", "family 👨\u200d👩\u200d👧", "flags 🇫🇷🇩🇪", "♥ ★ ☃ ✓", "€100 £50 ¥1000",
    "math: ∑ ∫ √ ∞ ≠ ≤", "arrows → ← ↑ ↓", "a\u0301 combining", "", " ", "   leading and trailing   ",
    "tabs\tand\nnewlines", "multiple     spaces   between", "x" * 60, "supercalifragilisticexpialidocious",
    "Donaudampfschifffahrtsgesellschaftskapitän", "pneumonoultramicroscopicsilicovolcanoconiosis",
    " ".join(["a photo of a dog"] * 30), "word " * 120, "lorem ipsum dolor sit amet, " * 20,
    # The cleaning rules differ from plain lowercasing on these (HTML, ftfy quotes/width/ligatures/mojibake, NFC).
    "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "&amp;lt;3", "\u201csmart quotes\u201d", "it\u2019s fine",
    "\ufb01ne \ufb02ower", "\uff26\uff35\uff2c\uff2c\u3000\uff37\uff29\uff24\uff34\uff28", "caf\u00c3\u00a9 au lait",
]


def _random_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÖÜ",
        "αβγδεζηθλμπσωΩДЖЙЛПФЦЧШЩЫЭЮЯабвгд",
        "的一是不了人我在有他这中大来上国个到说们",
        "あいうえおかきくけこアイウエオ",
        "😀😂🍕🐶🚗🌍🎉❤👍",
    ]
    out = []
    for _ in range(count):
        weights = [rng.random() for _ in pools]
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(rng.choices(pools, weights)[0]) for _ in range(n)))
    return out


CORPUS = HANDWRITTEN + _random_strings(150, seed=3)


@pytest.fixture(scope="module")
def rust_tok():
    mod = pytest.importorskip("instant_clip_tokenizer", reason="instant-clip-tokenizer (dev extra) not installed")
    return mod.Tokenizer()


def test_corpus_is_varied_enough():
    assert len(HANDWRITTEN) >= 100 and len(CORPUS) >= 250
    assert any(len(s.split()) > 100 for s in CORPUS)  # some truncate


def test_agrees_with_rust_tokenizer_where_cleaning_rules_agree(tok, rust_tok):
    # Strings whose full cleaning equals plain whitespace-collapse + lowercase (what the Rust tokenizer does).
    same_cleaning = [s for s in CORPUS if clean_text(s) == " ".join(s.split()).lower()]
    assert len(same_cleaning) >= 200
    ours = tokenize(same_cleaning)
    theirs = rust_tok.tokenize_batch(same_cleaning, context_length=77).astype(np.int64)
    equal_rows = (ours == theirs).all(axis=1)
    mismatches = [(s, ours[i][:12].tolist(), theirs[i][:12].tolist()) for i, s in enumerate(same_cleaning)
                  if not equal_rows[i]]
    assert not mismatches, f"agreement {equal_rows.mean():.4f} on {len(same_cleaning)} strings; first: {mismatches[:3]}"


def test_agrees_with_rust_tokenizer_on_every_string_after_our_cleaning(tok, rust_tok):
    # Strings the cleaning rules treat differently (ftfy width/quote fixes, mojibake, HTML) still agree once the
    # Rust tokenizer is given our cleaned text: the pre-tokeniser, byte map and merges are then all compared.
    cleaned = [tok.clean(s) for s in CORPUS]
    assert sum(c != " ".join(s.split()).lower() for s, c in zip(CORPUS, cleaned)) >= 8
    ours = tokenize(CORPUS)
    theirs = rust_tok.tokenize_batch(cleaned, context_length=77).astype(np.int64)
    assert np.array_equal(ours, theirs)
    for s, c in zip(CORPUS[:60], cleaned[:60]):
        assert tok.encode(s) == list(rust_tok.encode(c)), s


def test_rust_and_ours_truncate_the_same_way(rust_tok):
    long_text = " ".join(f"word{i}" for i in range(200))
    theirs = rust_tok.tokenize_batch([long_text], context_length=77)[0]
    assert theirs[76] == EOT and np.array_equal(tokenize(long_text)[0], theirs.astype(np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tom &amp; Jerry", "tom & jerry"),
        ("&amp;lt;b&amp;gt;", "<b>"),  # escaped twice, unescaped twice
        ("a &lt; b", "a < b"),
        ("  many \t\n  spaces\u00a0here  ", "many spaces here"),
        ("HeLLo WORLD", "hello world"),
        ("", ""),
    ],
)
def test_clean_text_hand_derived(raw, expected):
    assert clean_text(raw) == expected
    assert clean_text(raw, fix_unicode=False) == expected


def test_cleaning_reaches_the_tokens():
    assert np.array_equal(tokenize("Tom &amp; Jerry"), tokenize("tom & jerry"))
    assert np.array_equal(tokenize("  A \t DOG.\n"), tokenize("a dog."))
    assert not np.array_equal(tokenize("Tom &amp; Jerry"), tokenize("tom amp jerry"))


def test_lowercase_false_keeps_case_and_changes_tokens():
    cased = ClipTokenizer(TextConfig(lowercase=False))
    assert cased.clean("Hello World") == "Hello World"
    assert cased.encode("Hello") != default_tokenizer().encode("Hello")
    assert cased.encode("hello") == default_tokenizer().encode("hello")
    assert cased.encode("IT'S") == cased.encode("IT") + cased.encode("'S")  # contractions split case-insensitively


def test_ftfy_repairs_mojibake_when_installed():
    pytest.importorskip("ftfy", reason="ftfy (the 'text' extra) not installed")
    assert clean_text("cafÃ©") == "café"
    assert clean_text("\u201cquoted\u201d") == '"quoted"'  # ftfy uncurls quotes
    assert clean_text("cafÃ©", fix_unicode=False) == "cafã©"


def test_cleaning_works_without_ftfy(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # makes `import ftfy` raise ImportError
    monkeypatch.setattr(text_mod, "_ftfy_probed", False)
    monkeypatch.setattr(text_mod, "_ftfy_fix_text", None)
    from edgebind import _logging

    monkeypatch.setattr(_logging, "_seen", set())
    with caplog.at_level(logging.DEBUG, logger="edgebind.preprocess.text"):
        assert clean_text("Tom &amp; Jerry  ") == "tom & jerry"
        assert clean_text("cafÃ©") == "cafã©"  # mojibake stays without ftfy
        clean_text("again")
    assert sum("ftfy is not installed" in r.getMessage() for r in caplog.records) == 1
    assert text_mod._ftfy_probed and text_mod._ftfy_fix_text is None
    row = ClipTokenizer()(["A dog."])
    assert row[0, :5].tolist() == [SOT, 320, 1929, 269, EOT]


def test_literal_special_tokens_in_text_map_to_their_ids(tok):
    assert tok.encode("a <|endoftext|> b") == [320, EOT, 321]
    row = tokenize("<|startoftext|>a")[0]
    assert row[:4].tolist() == [SOT, SOT, 320, EOT]


# ----------------------------------------------------------------------------------------------------------------
# Truncation, padding and decoding


def test_long_text_truncates_keeping_eot(tok):
    words = [random.Random(5).choice(["dog", "robot", "kitchen", "blue", "walking"]) for _ in range(200)]
    text = " ".join(words)
    row = tokenize(text)[0]
    assert row.shape == (77,)
    assert row[76] == EOT and int(row.argmax()) == 76 and (row == EOT).sum() == 1
    assert row[:76].tolist() == [SOT] + tok.encode(text)[:75]


@pytest.mark.parametrize("n_words", [74, 75, 76])
def test_truncation_boundary(tok, n_words):
    text = " ".join(["dog"] * n_words)  # one token per word
    row = tokenize(text)[0]
    eot_at = min(n_words + 1, 76)  # 75 body tokens fit; 76 words lose the last one
    assert row[0] == SOT and row[eot_at] == EOT and int(row.argmax()) == eot_at
    assert (row[eot_at + 1 :] == 0).all()
    assert (row[1 : min(n_words, 75) + 1] == tok.encode("dog")[0]).all()


def test_other_context_lengths():
    assert tokenize("a dog.", context_length=3)[0].tolist() == [SOT, 320, EOT]
    assert tokenize(["a dog.", "x"], context_length=10).tolist() == [
        [SOT, 320, 1929, 269, EOT, 0, 0, 0, 0, 0],
        [SOT, tokenize("x")[0, 1], EOT, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert tokenize([""])[0, :3].tolist() == [SOT, EOT, 0]


@pytest.mark.parametrize(
    "text", ["a photo of a dog", "the quick brown fox jumps over the lazy dog", "supercalifragilisticexpialidocious"]
)
def test_decode_round_trips_lowercase_words(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tokenize(text)[0]) == text  # SOT skipped, stops at EOT (padding 0 is the '!' token)


def test_decode_round_trips_lowercase_ascii_up_to_spacing(tok):
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-:;()/&"
    for _ in range(50):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50)))
        assert "".join(tok.decode(tok.encode(s)).split()) == "".join(s.split()), s
    assert tok.decode(tok.encode("café naïve 日本")) == "café naïve 日本"


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(PreprocessError, match=r"ids\[1\].*49408"):
        tok.decode([320, 49408])
    with pytest.raises(PreprocessError, match="1-D"):
        tok.decode(np.zeros((2, 3), dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Errors, config, caching, speed


def test_non_str_item_names_index_and_type():
    with pytest.raises(PreprocessError, match=r"texts\[1\].*int"):
        tokenize(["ok", 3])
    with pytest.raises(PreprocessError, match=r"texts\[0\].*bytes"):
        tokenize([b"bytes"])
    with pytest.raises(PreprocessError, match="texts: expected a str or a list/tuple"):
        tokenize(x for x in ["a"])
    with pytest.raises(PreprocessError, match="text: expected a str"):
        default_tokenizer().encode(None)


def test_empty_list_rejected():
    with pytest.raises(PreprocessError, match="at least one string"):
        tokenize([])
    with pytest.raises(PreprocessError, match="at least one string"):
        tokenize(())


@pytest.mark.parametrize("bad", [2, 0, -5, 2.5, True, "77"])
def test_bad_context_length_rejected(bad):
    with pytest.raises(PreprocessError, match="context_length"):
        tokenize(["a dog"], context_length=bad)


def test_text_config_validation_and_round_trip():
    cfg = TextConfig(context_length=64)
    d = cfg.to_dict()
    assert d["context_length"] == 64 and d["vocab_sha256"] == VOCAB_SHA256 and d["eot_token"] == EOT
    assert TextConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        TextConfig.from_dict({**d, "truncate": "tail"})
    with pytest.raises(ConfigError, match="context_length"):
        TextConfig(context_length=2)
    assert preprocess("a dog", cfg).shape == (1, 64)
    assert np.array_equal(preprocess(["a dog"]), tokenize(["a dog"]))


def test_vocab_hash_mismatch_and_missing_file(tmp_path):
    bad = tmp_path / "vocab.txt.gz"
    shutil.copy(default_tokenizer().vocab_path, bad)
    with open(bad, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        ClipTokenizer(vocab_path=bad).encode("a")
    with pytest.raises(CheckpointError, match="not found"):
        ClipTokenizer(vocab_path=tmp_path / "missing.gz").encode("a")
    with pytest.raises(CheckpointError, match="vocab_size"):
        ClipTokenizer(TextConfig(vocab_size=50000)).encode("a")


def test_default_instance_is_shared_and_word_cache_is_bounded():
    assert default_tokenizer() is default_tokenizer()
    small = ClipTokenizer(cache_size=4)
    small.encode("one two three four five six seven")
    info = small._bpe.encode_word.cache_info()
    assert info.maxsize == 4 and info.currsize == 4


def test_speed_label_bank():
    # A few thousand short prompts per second is the requirement; cold word cache, fresh instance.
    fresh = ClipTokenizer()
    fresh.encode("warm up the vocabulary load")
    nouns = ["dog", "cat", "car", "robot", "chair", "kitchen", "person", "bicycle", "tree", "door", "cup", "phone"]
    prompts = [f"a photo of a {nouns[i % 12]} number {i} in the {nouns[(i * 7) % 12]}" for i in range(3000)]
    start = time.perf_counter()
    out = fresh(prompts)
    rate = len(prompts) / (time.perf_counter() - start)
    assert out.shape == (3000, 77)
    assert rate > 2000, f"{rate:.0f} prompts/s"
