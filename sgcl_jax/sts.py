"""STS benchmark readers (SentEval layout), data-folder resolution and the atomic download step."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import logging
import os
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from sgcl_jax.files import read_lines, staged_dir
from sgcl_jax.tasks import STS17_TRACKS, STS_TASKS, MissingData, data_folder

SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
TASKS = STS_TASKS
FOLDERS = {**{t: f"{t}-en-test" for t in SUBSETS}, "STSB": "STSBenchmark", "SICKR": "SICK"}
STS17_FOLDER = "STS17-multilingual"
GOLD_RANGE = (0.0, 5.0)  # STS gold scores; SICK's relatedness is 1..5

# Public releases (SentEval's sources). Override the lot with SGCL_STS_MIRROR=<base url>: each file is then
# fetched from <base>/<its file name>.
SOURCES = {
    "STS12": ["http://ixa2.si.ehu.es/stswiki/images/4/40/STS2012-en-test.zip"],
    "STS13": ["http://ixa2.si.ehu.es/stswiki/images/2/2f/STS2013-en-test.zip"],
    "STS14": ["http://ixa2.si.ehu.es/stswiki/images/8/8c/STS2014-en-test.zip"],
    "STS15": ["http://ixa2.si.ehu.es/stswiki/images/d/da/STS2015-en-test.zip"],
    "STS16": ["http://ixa2.si.ehu.es/stswiki/images/9/98/STS2016-en-test.zip"],
    "STSB": ["https://sbert.net/datasets/stsbenchmark.tsv.gz"],
    "SICKR": [f"https://raw.githubusercontent.com/alvations/stasis/master/SICK-data/SICK_{s}.txt"
              for s in ("train", "trial", "test_annotated")],
}

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Subset:
    """Scored sentence pairs of one subset (gold on the 0-5 scale for STS, 1-5 for SICK)."""

    name: str
    sent1: list[str]
    sent2: list[str]
    gold: np.ndarray

    def __len__(self) -> int:
        return len(self.gold)


def distinct_sentences(subsets: list[Subset]) -> list[str]:
    """Every sentence of the subsets once, sorted (encode once, look up per pair)."""
    return sorted({s for sub in subsets for s in (*sub.sent1, *sub.sent2)})


def _score(value: str, path: Path, line: int, lo: float = GOLD_RANGE[0], hi: float = GOLD_RANGE[1]) -> float:
    """A gold score: a finite number in the task's range (a nan would turn the whole task into nan)."""
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: expected a score, got {value!r}") from None
    if not (np.isfinite(x) and lo - 1e-6 <= x <= hi + 1e-6):
        raise ValueError(f"{path}:{line}: gold score {value!r} is not a finite number in [{lo:g}, {hi:g}]")
    return x


def read_semeval_subset(folder: Path, year: str, subset: str) -> Subset:
    """One STS12-16 subset: tab-separated pairs (extra columns ignored) + gold scores (blank = unscored, skipped)."""
    stems = [f"STS.{{}}.{subset}.txt", f"STS20{year[-2:]}.{{}}.{subset}.txt"]
    for stem in stems:
        inp, gs = folder / stem.format("input"), folder / stem.format("gs")
        if inp.exists() and gs.exists():
            break
    else:
        raise MissingData(f"{folder}: no {stems[0].format('input')} / {stems[0].format('gs')} pair")
    return read_pair_files(inp, gs, subset)


def read_pair_files(inp: Path, gs: Path, name: str) -> Subset:
    """An STS input file (sentence1<TAB>sentence2[<TAB>...]) and its gold file, line by line; blank gold = unscored.

    The gold file's last line may lack its newline. Differing line counts are an error naming both files.
    """
    pairs, golds = read_lines(inp), read_lines(gs)
    if len(pairs) != len(golds):
        raise ValueError(f"{inp} has {len(pairs)} lines but {gs} has {len(golds)}: they must pair line by line")
    s1, s2, gold = [], [], []
    for i, (pair, g) in enumerate(zip(pairs, golds, strict=True), start=1):
        if not g.strip():
            continue
        cols = pair.split("\t")
        if len(cols) < 2:
            raise ValueError(f"{inp}:{i}: expected two tab-separated sentences, found {len(cols)} column(s)")
        s1.append(cols[0])
        s2.append(cols[1])
        gold.append(_score(g.strip(), gs, i))
    return Subset(name, s1, s2, np.asarray(gold, np.float64))


def _read_table(path: Path, header: list[str] | None, min_cols: int) -> tuple[tuple[int, list[str]], ...]:
    # A training run reads STS-B for its text, its dev set and its test scores: each file is parsed once per
    # process, and again when its size or modification time changes.
    stat = path.stat()
    return _parse_table(path, stat.st_mtime_ns, stat.st_size, tuple(header) if header else None, min_cols)


@functools.lru_cache(maxsize=16)
def _parse_table(path: Path, mtime_ns: int, size: int, header: tuple[str, ...] | None, min_cols: int
                 ) -> tuple[tuple[int, list[str]], ...]:
    if path.suffix == ".gz":
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read as gzip UTF-8 text ({e})") from e
        lines = text.split("\n")
        lines = [x.rstrip("\r") for x in (lines[:-1] if lines and lines[-1] == "" else lines)]
    else:
        lines = read_lines(path)
    start = 0
    if header is not None:
        got = lines[0].split("\t") if lines else []
        if tuple(got[: len(header)]) != header:
            raise ValueError(f"{path}:1: expected header {list(header)}, got {got[:len(header)]}")
        start = 1
    rows = []
    for i, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        cols = line.split("\t")  # quoting disabled: sentences contain quote characters
        if len(cols) < min_cols:
            raise ValueError(f"{path}:{i}: expected at least {min_cols} tab-separated columns, found {len(cols)}")
        rows.append((i, cols))
    return tuple(rows)


STSB_HEADER = ["split", "genre", "dataset", "year", "sid", "score", "sentence1", "sentence2"]


def read_stsb(folder: Path, split: str = "test") -> Subset:
    """STS-B from stsbenchmark.tsv.gz (sentence-transformers' file) or the original sts-<split>.csv."""
    tsv = folder / "stsbenchmark.tsv.gz"
    if tsv.exists():
        rows = [(i, c) for i, c in _read_table(tsv, STSB_HEADER, 8) if c[0] == split]
        score_col, s1_col = 5, 6
        path = tsv
    elif (folder / f"sts-{split}.csv").exists():
        path = folder / f"sts-{split}.csv"
        rows, score_col, s1_col = _read_table(path, None, 7), 4, 5
    else:
        raise MissingData(f"{folder}: neither stsbenchmark.tsv.gz nor sts-{split}.csv")
    return Subset(split, [c[s1_col] for _, c in rows], [c[s1_col + 1] for _, c in rows],
                  np.asarray([_score(c[score_col], path, i) for i, c in rows], np.float64))


SICK_HEADER = ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"]


def read_sick(folder: Path, split: str = "test") -> Subset:
    """SICK-R relatedness from SICK_{train,trial,test_annotated}.txt."""
    path = folder / f"SICK_{'test_annotated' if split == 'test' else split}.txt"
    if not path.exists():
        raise MissingData(f"{path}: not found")
    rows = _read_table(path, SICK_HEADER, 4)
    return Subset(split, [c[1] for _, c in rows], [c[2] for _, c in rows],
                  np.asarray([_score(c[3], path, i, 1.0, 5.0) for i, c in rows], np.float64))


def read_task(task: str, data_dir: str | os.PathLike | None = None) -> list[Subset]:
    """A task's scored subsets: a built-in STS set, an STS17 track, or a folder of STS files; MissingData if absent."""
    if task in STS17_TRACKS:
        return [read_sts17(task, data_folder("sts", data_dir) / STS17_FOLDER)]
    if task not in TASKS:
        if Path(task).expanduser().is_dir():
            return read_sts_folder(Path(task).expanduser())
        raise ValueError(f"unknown STS task {task!r}; choose from {','.join(TASKS)}, an STS17 track or a folder")
    folder = data_folder("sts", data_dir) / FOLDERS[task]
    if not folder.is_dir():
        raise MissingData(f"{folder}: not found")
    return read_folder(task, folder)


def read_sts17(task: str, folder: Path) -> Subset:
    """One SemEval-2017 track from the release's STS2017.eval.v1.1/ and STS2017.gs/ folders."""
    stem = STS17_TRACKS[task]
    inp = folder / "STS2017.eval.v1.1" / f"STS.input.{stem}.txt"
    gs = folder / "STS2017.gs" / f"STS.gs.{stem}.txt"
    if not (inp.exists() and gs.exists()):
        raise MissingData(f"{folder}: no {inp.relative_to(folder)} / {gs.relative_to(folder)} pair")
    if task == "STS17-tr-en":
        n_in, n_gs = len(read_lines(inp)), len(read_lines(gs))
        if n_in != n_gs:
            raise ValueError(f"{inp} has {n_in} lines for the {n_gs} gold scores of {gs}, and the release does not "
                             f"say which lines are scored: {task} is refused rather than guessed")
    return read_pair_files(inp, gs, task)


def read_sts_folder(folder: Path) -> list[Subset]:
    """Every `STS.input.<name>.txt` (or 2016-style `*.input.<name>.txt`) with its gold file, as one task."""
    subsets = []
    for inp in sorted(folder.glob("*.input.*.txt")):
        prefix, name = inp.name.split(".input.", 1)
        gs = folder / f"{prefix}.gs.{name}"
        if not gs.exists():
            raise MissingData(f"{inp}: no gold file {gs.name} beside it")
        subsets.append(read_pair_files(inp, gs, name[: -len(".txt")]))
    if not subsets:
        raise MissingData(f"{folder}: no STS.input.<name>.txt files")
    return scored(subsets, folder)


def scored(subsets: list[Subset], folder: Path) -> list[Subset]:
    """The subsets that have scored pairs; one without any is skipped with a warning, and a task without any
    scored pair is an error (it is never reported as a score)."""
    kept = [s for s in subsets if len(s.gold)]
    for s in subsets:
        if not len(s.gold):
            log.warning("%s: subset %s has no scored pairs (every gold line is blank); skipped", folder, s.name)
    if not kept:
        raise ValueError(f"{folder}: no scored pairs: every gold line of {', '.join(s.name for s in subsets)} is "
                         "blank")
    return kept


def read_folder(task: str, folder: Path) -> list[Subset]:
    """A task's subsets from its own folder (e.g. <data>/STS12-en-test)."""
    if task == "STSB":
        return [read_stsb(folder)]
    if task == "SICKR":
        return [read_sick(folder)]
    return scored([read_semeval_subset(folder, task, s) for s in SUBSETS[task]], folder)


def stsb_sentences(data_dir: str | os.PathLike | None = None) -> list[str]:
    """sentence1 and sentence2 of every STS-B row of train, dev and test (SG-BERT's unlabeled training text)."""
    folder = data_folder("sts", data_dir) / FOLDERS["STSB"]
    out: list[str] = []
    for split in ("train", "dev", "test"):
        sub = read_stsb(folder, split)
        for a, b in zip(sub.sent1, sub.sent2, strict=True):
            out += [a, b]
    return out


# ---------------------------------------------------------------------------------------------- download


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http(s) URLs from our table
        return r.read()


def _urls(task: str) -> list[str]:
    mirror = os.environ.get("SGCL_STS_MIRROR")
    return [f"{mirror.rstrip('/')}/{u.rsplit('/', 1)[-1]}" if mirror else u for u in SOURCES[task]]


def download(task: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Fetches a task's public files into the data folder; atomic (staged, parsed, then renamed into place)."""
    final = data_folder("sts", data_dir) / FOLDERS[task]
    with staged_dir(final) as staging:
        for url in _urls(task):
            data = _fetch(url)
            name = url.rsplit("/", 1)[-1]
            if not name.endswith(".zip"):
                (staging / name).write_bytes(data)
                continue
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for member in z.namelist():
                    base = member.rsplit("/", 1)[-1]
                    # Releases nest their files differently; keep the STS input/gold files wherever they are.
                    if base.startswith("STS") and (".input." in base or ".gs." in base):
                        (staging / base).write_bytes(z.read(member))
        read_folder(task, staging)  # raises (naming file and line) if what arrived does not parse
    return final
