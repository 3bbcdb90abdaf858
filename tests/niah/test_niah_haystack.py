"""Haystacks: built-in corpora, directory/file/dataset sources, cyclic repetition, sentence boundaries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headatlas.niah import BUILTIN_LANGS, Haystack, load_haystack, sentence_boundaries

ENDERS = {"zh": "。！？", "ja": "。！？"}


@pytest.mark.parametrize("lang", BUILTIN_LANGS)
def test_builtin_corpus(lang: str) -> None:
    h = load_haystack(lang)
    assert h.lang == lang and h.source == f"builtin:{lang}"
    assert len(h.text) >= 6000
    enders = ENDERS.get(lang, ".!?")
    n_sentences = sum(h.text.count(c) for c in enders)
    assert n_sentences >= 60
    assert len(sentence_boundaries(h.text)) >= 60
    if lang in ENDERS:  # written without spaces between words
        assert h.text.count(" ") < 10
    else:
        assert "。" not in h.text


def test_lang_argument_ignored_for_builtin() -> None:
    assert load_haystack("fr", lang="en").lang == "fr"


@pytest.mark.parametrize("source", ["it", "xx", "dataset:", "/no/such/dir"])
def test_unknown_source(source: str) -> None:
    with pytest.raises(ValueError, match="unknown haystack source|dataset:NAME"):
        load_haystack(source)


def test_unknown_source_lists_languages() -> None:
    with pytest.raises(ValueError, match="en, de, fr, es, ru, zh, ja, sw"):
        load_haystack("it")


def test_empty_haystack() -> None:
    with pytest.raises(ValueError, match="empty"):
        Haystack(lang="en", text="  \n ")


def test_directory_haystack(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("Second file. It follows.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("\nFirst file comes first.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    h = load_haystack(tmp_path, lang="en")
    assert h.text == "First file comes first.\n\nSecond file. It follows."
    assert h.lang == "en" and h.source == str(tmp_path)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no \\*.txt files"):
        load_haystack(str(tmp_path))


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_haystack(str(tmp_path))


def test_file_haystack(tmp_path: Path) -> None:
    f = tmp_path / "story.txt"
    f.write_text("\n Un. Deux.\n", encoding="utf-8")
    assert load_haystack(f, lang="fr").text == "Un. Deux."


def test_dataset_disk_haystack(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"body": ["Row one is here.", "", "Row two follows."], "n": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "ds"))
    h = load_haystack(f"dataset-disk:{tmp_path / 'ds'}", lang="en", text_column="body")
    assert h.text == "Row one is here.\n\nRow two follows."
    assert h.source.startswith("dataset-disk:")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_haystack(f"dataset-disk:{tmp_path / 'ds'}")


def test_dataset_disk_dict_split_and_max_chars(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict({"text": ["Alpha one.", "Beta two.", "Gamma."]})}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    h = load_haystack(f"dataset-disk:{tmp_path / 'dd'}", split="test", max_chars=12)
    assert h.text == "Alpha one.\n\nBeta two."
    with pytest.raises(ValueError, match="no split 'train'"):
        load_haystack(f"dataset-disk:{tmp_path / 'dd'}")


def test_dataset_hub_style_source(tmp_path: Path) -> None:
    """'dataset:NAME' goes through datasets.load_dataset (here a local folder of JSON lines)."""
    pytest.importorskip("datasets")
    (tmp_path / "data.jsonl").write_text(
        '{"text": "Ein Satz hier."}\n{"text": "Noch ein Satz."}\n', encoding="utf-8"
    )
    h = load_haystack(f"dataset:{tmp_path}", lang="de")
    assert h.text == "Ein Satz hier.\n\nNoch ein Satz." and h.lang == "de"


def test_text_for_tokens_repeats_cyclically(word_tok) -> None:
    h = Haystack(lang="en", text="Short text here.")
    text = h.text_for_tokens(word_tok, 50)
    assert len(word_tok(text)["input_ids"]) >= 50
    assert text.startswith("Short text here.\n\nShort text here.\n\n")
    # a long corpus is not repeated for a short request
    long = load_haystack("en")
    assert long.text.startswith(long.text_for_tokens(word_tok, 100))


def test_text_for_tokens_long_request(bytelevel_tok) -> None:
    h = load_haystack("zh")
    text = h.text_for_tokens(bytelevel_tok, 20_000)
    assert len(bytelevel_tok(text)["input_ids"]) >= 20_000
    assert text.count(h.text[:40]) >= 2


def test_sentence_boundaries_latin() -> None:
    text = 'He said "Stop!" Then left. Pi is 3.14 today? Yes.\n\nNew paragraph… ¿Qué? Fin.'
    bounds = sentence_boundaries(text)
    starts = [text[b : b + 4] for b in bounds]
    assert starts == ["He s", "Then", "Pi i", "Yes.", "New ", "¿Qué", "Fin.", ""]
    for b in bounds[1:-1]:
        assert text[b - 1].isspace() and re.search(r"[.!?…][\"')»]*\s+$", text[:b])


@pytest.mark.parametrize(
    "text,starts",
    [
        ("今天下雨。明天晴！后天呢？好的", ["今", "明", "后", "好"]),
        ("「行こう。」と彼は言った。\nそして歩いた。", ["「", "そ"]),
        ("雨が降る。 晴れる。", ["雨", "晴"]),
        ("他说：“走吧。”\n我们走了。（完）", ["他", "我", "（"]),
    ],
)
def test_sentence_boundaries_cjk(text: str, starts: list[str]) -> None:
    bounds = [b for b in sentence_boundaries(text) if b < len(text)]
    assert [text[b] for b in bounds] == starts


def test_sentence_boundary_at_end() -> None:
    assert sentence_boundaries("One. Two.") == [0, 5, 9]
    assert sentence_boundaries("一。二。") == [0, 2, 4]
    assert sentence_boundaries("No end") == [0]
