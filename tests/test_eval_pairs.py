"""LFW pairs files and pairs built from identity labels."""

from __future__ import annotations

import pytest

from faceveil.errors import InputError
from faceveil.evaluate.pairs import Pair, gallery_and_probes, pairs_from_labels, parse_lfw_pairs, read_lfw_pairs, resolve_pairs

TEN_FOLD = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Aaron_Peirsol\t1\t2
Aaron_Peirsol\t3\t4
Abdoulaye_Wade\t1\tPaul_Kelleher\t1
Abdoulaye_Wade\t2\tBrian_Mulroney\t1
"""


def test_ten_fold_format() -> None:
    pairs = parse_lfw_pairs(TEN_FOLD)
    assert len(pairs) == 8
    assert pairs[0].first == "Abel_Pacheco/Abel_Pacheco_0001" and pairs[0].second == "Abel_Pacheco/Abel_Pacheco_0004"
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs[2].second == "Dean_Barker/Dean_Barker_0001"


def test_plain_lines_and_one_number_header() -> None:
    plain = "Abel_Pacheco 1 4\nA_B 2 C_D 10\n\n# a comment\n"
    pairs = parse_lfw_pairs(plain)
    assert [(p.first, p.second, p.same, p.fold) for p in pairs] == [
        ("Abel_Pacheco/Abel_Pacheco_0001", "Abel_Pacheco/Abel_Pacheco_0004", True, None),
        ("A_B/A_B_0002", "C_D/C_D_0010", False, None),
    ]
    dev = "1\nAbel_Pacheco 1 4\nA_B 2 C_D 10\n"  # pairsDevTrain-style header: one fold
    assert [p.fold for p in parse_lfw_pairs(dev)] == [0, 0]


def test_count_mismatch_warns_and_bad_lines_name_the_line(tmp_path) -> None:
    warnings: list[str] = []
    parse_lfw_pairs("10\t300\nAbel_Pacheco 1 4\n", "p.txt", warnings.append)
    assert warnings and "6000" in warnings[0] and "found 1" in warnings[0]
    with pytest.raises(InputError, match=r"p.txt:3"):
        parse_lfw_pairs("1\t1\nA 1 2\nA one 2\n", "p.txt")
    with pytest.raises(InputError, match=r"p.txt:2: expected"):
        parse_lfw_pairs("A 1 2\nA 1 2 3 4 5\n", "p.txt")
    with pytest.raises(InputError, match="no such pairs file"):
        read_lfw_pairs(tmp_path / "missing.txt")
    f = tmp_path / "pairs.txt"
    f.write_text(TEN_FOLD)
    assert len(read_lfw_pairs(f)) == 8


def test_resolve_pairs_drops_pairs_with_missing_photos() -> None:
    specs = parse_lfw_pairs(TEN_FOLD)
    have = {"Abel_Pacheco/Abel_Pacheco_0001": "ap1", "Abel_Pacheco/Abel_Pacheco_0004": "ap4", "Dean_Barker/Dean_Barker_0001": "db1"}
    pairs, missing = resolve_pairs(specs, have)
    assert pairs == [Pair("ap1", "ap4", True, 0)]
    assert "Akhmed_Zakayev/Akhmed_Zakayev_0001" in missing and "Abel_Pacheco/Abel_Pacheco_0001" not in missing


def test_pairs_from_labels_like_the_sample_set() -> None:
    faces = [(f"{who}-{kind}-00", who) for who in ("a", "b", "c") for kind in ("orig", "mirror")] + [("lonely-orig-00", "d"), ("nolabel", "")]
    pairs = pairs_from_labels(faces)
    genuine = [p for p in pairs if p.same]
    assert genuine == [Pair("a-mirror-00", "a-orig-00", True), Pair("b-mirror-00", "b-orig-00", True), Pair("c-mirror-00", "c-orig-00", True)]
    impostors = [p for p in pairs if not p.same]
    assert len(impostors) == 6 and all(p.ref.split("-")[0] != p.probe.split("-")[0] for p in impostors)
    assert len([p for p in pairs_from_labels(faces, max_impostors=2) if not p.same]) == 2


def test_gallery_and_probes() -> None:
    pairs = [Pair("r1", "p1", True), Pair("r2", "p2", True), Pair("r1", "p2", False), Pair("r3", "x", False)]
    labels = {"r1": "A", "p1": "A", "r2": "B", "p2": "B", "r3": "C", "x": "D"}
    gallery, probes = gallery_and_probes(pairs, labels)
    assert gallery == ["r1", "r2", "r3"] and probes == ["p1", "p2"]
