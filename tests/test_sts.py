"""STS readers (real files in ../shared and hand-made fixtures in the other formats) and the download step."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sgcl_jax import scoring, sts, tasks

COUNTS = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STSB": 1379}


@pytest.mark.parametrize("task", list(COUNTS))
def test_shared_pair_counts(data_dir, task):
    subsets = sts.read_task(task, data_dir)
    assert sum(len(s) for s in subsets) == COUNTS[task]
    for s in subsets:
        assert len(s.sent1) == len(s.sent2) == len(s.gold)
        assert 0 <= s.gold.min() and s.gold.max() <= 5


def test_stsb_training_sentences(data_dir):
    assert len(sts.stsb_sentences(data_dir)) == 17256


def test_sts16_fixture(tmp_path, make_sts16):
    make_sts16(tmp_path)
    subsets = sts.read_task("STS16", tmp_path)
    assert [s.name for s in subsets] == list(sts.SUBSETS["STS16"])
    assert all(len(s) == 4 for s in subsets)
    assert subsets[0].sent1[0] == "sentence 0 1 a" and subsets[0].sent2[0] == "sentence 0 1 b"
    np.testing.assert_array_equal(subsets[0].gold, [4.0, 3.0, 1.5, 0.0])


def test_sick_fixture(tmp_path, make_sick):
    make_sick(tmp_path)
    (sub,) = sts.read_task("SICKR", tmp_path)
    assert len(sub) == 7 and sub.sent1[2] == 'A "quoted" man 2' and sub.gold[2] == 3.0


def test_an_edited_file_is_read_again(tmp_path, make_sick):
    """Tables are parsed once per process; a file changed on disk is parsed again, not served from memory."""
    path = make_sick(tmp_path) / "SICK" / "SICK_test_annotated.txt"
    assert len(sts.read_task("SICKR", tmp_path)[0]) == 7
    path.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")
    (sub,) = sts.read_task("SICKR", tmp_path)
    assert len(sub) == 3 and sub.sent1[-1] == 'A "quoted" man 2'


def test_stsb_original_csv_layout(tmp_path, write):
    rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 5}.0\tA plane {i}.\tAn \"air\" plane {i}.\textra"
            for i in range(5)]
    write(tmp_path / "STSBenchmark" / "sts-test.csv", "\n".join(rows) + "\n")
    (sub,) = sts.read_task("STSB", tmp_path)
    assert len(sub) == 5 and sub.sent2[1] == 'An "air" plane 1.' and sub.gold[3] == 3.0


def test_malformed_files_name_file_and_line(tmp_path, make_sts16, make_sick, write):
    make_sts16(tmp_path)
    gs = tmp_path / "STS16-en-test" / "STS2016.gs.headlines.txt"
    write(gs, "\n4.0\nabc\n\n1\n0\n")
    with pytest.raises(ValueError, match=r"STS2016\.gs\.headlines\.txt:3: expected a score, got 'abc'"):
        sts.read_task("STS16", tmp_path)
    write(gs, "1\n")
    with pytest.raises(ValueError, match="6 lines but .*has 1"):
        sts.read_task("STS16", tmp_path)
    make_sts16(tmp_path)
    inp = tmp_path / "STS16-en-test" / "STS2016.input.plagiarism.txt"
    write(inp, "a\tb\nonly one column\na\tb\na\tb\na\tb\na\tb\n")
    with pytest.raises(ValueError, match=r"STS2016\.input\.plagiarism\.txt:2: expected two tab-separated"):
        sts.read_task("STS16", tmp_path)
    write(inp, b"a\tb\na\tb\n\xff\xfe\tb\na\tb\na\tb\na\tb\n")
    with pytest.raises(ValueError, match=r"plagiarism\.txt:3: not UTF-8"):
        sts.read_task("STS16", tmp_path)
    make_sick(tmp_path)
    write(tmp_path / "SICK" / "SICK_test_annotated.txt", "pair_ID\twrong\n")
    with pytest.raises(ValueError, match=r"SICK_test_annotated\.txt:1: expected header"):
        sts.read_task("SICKR", tmp_path)


def test_missing_task_is_reported(tmp_path):
    with pytest.raises(sts.MissingData):
        sts.read_task("STS16", tmp_path)


def test_download_from_local_mirror(mirror, tmp_path, monkeypatch):
    url, served = mirror
    monkeypatch.setenv("SGCL_STS_MIRROR", url)
    target = tmp_path / "cache"
    sts.download("STS12", target)
    sts.download("STSB", target)
    assert sum(len(s) for s in sts.read_task("STS12", target)) == 3108
    assert len(sts.read_task("STSB", target)[0]) == 1379
    # A broken archive and a truncated file fail loudly and leave nothing behind.
    with pytest.raises(Exception, match="zip"):
        sts.download("STS13", target)
    (served / "stsbenchmark.tsv.gz").write_bytes(gzip.compress(b"split\tgenre\n"))
    with pytest.raises(ValueError, match="expected header"):
        sts.download("STSB", target)
    assert sorted(p.name for p in target.iterdir()) == ["STS12-en-test", "STSBenchmark"]
    assert len(sts.read_task("STSB", target)[0]) == 1379  # the earlier good copy is intact
    # Nothing listens there: a clear network error, not a hang.
    monkeypatch.setenv("SGCL_STS_MIRROR", "http://127.0.0.1:9/")
    with pytest.raises(OSError):
        sts.download("STS15", target)


def test_sts17_tracks_and_the_refused_track_6(data_dir):
    for track in ("STS17-ar-ar", "STS17-es-es", "STS17-en-en", "STS17-es-en-wmt"):
        (sub,) = sts.read_task(track, data_dir)
        assert len(sub.gold) == 250 and np.all((sub.gold >= 0) & (sub.gold <= 5)), track
    (wmt,) = sts.read_task("STS17-es-en-wmt", data_dir)
    assert np.array_equal(wmt.gold, np.round(wmt.gold))  # track 4b's gold scores are integers
    (ar,) = sts.read_task("STS17-ar-ar", data_dir)
    assert any("\u0600" <= ch <= "\u06ff" for ch in ar.sent1[0])  # Arabic text read as UTF-8
    with pytest.raises(ValueError, match=r"500 lines for the 250 gold scores.*refused"):
        sts.read_task("STS17-tr-en", data_dir)
    assert tasks.expand(["sts17"]) == ("STS17-ar-ar", "STS17-ar-en", "STS17-es-es", "STS17-es-en",
                                       "STS17-es-en-wmt", "STS17-en-en")
    auto = scoring.Settings()
    assert auto.sts_metric("STS17-en-en") == "pearson" and auto.sts_metric("STSB") == "spearman"


def test_any_sts_format_folder_is_a_task(tmp_path, write):
    folder = tmp_path / "mine"
    # STS.input/STS.gs names: an extra column, a blank (unscored) gold line, no newline after the last score.
    write(folder / "STS.input.news.txt", "a b\tc d\textra\ne f\tg h\ti j\tk\nl m\tn o\n")
    write(folder / "STS.gs.news.txt", "4.5\n\n0")
    # 2016-style names.
    write(folder / "STS2016.input.forum.txt", "p\tq\nr\ts\n")
    write(folder / "STS2016.gs.forum.txt", "1\n2\n")
    subsets = {s.name: s for s in sts.read_task(str(folder))}
    assert set(subsets) == {"news", "forum"}
    assert subsets["news"].sent1 == ["a b", "l m"] and subsets["news"].sent2 == ["c d", "n o"]
    assert subsets["news"].gold.tolist() == [4.5, 0.0] and subsets["forum"].gold.tolist() == [1.0, 2.0]
    assert tasks.expand([str(folder), "STSB"]) == (str(folder), "STSB")
    write(folder / "STS.gs.news.txt", "4.5\n1\n")
    with pytest.raises(ValueError, match=r"STS.input.news.txt has 3 lines but .*STS.gs.news.txt has 2"):
        sts.read_task(str(folder))
    write(folder / "STS.gs.news.txt", "4.5\n1\n7\n")
    with pytest.raises(ValueError, match=r"STS.gs.news.txt:3"):
        sts.read_task(str(folder))
    with pytest.raises(ValueError, match="unknown"):
        tasks.expand([str(tmp_path / "nope")])
