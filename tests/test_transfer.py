"""SentEval transfer tasks (senteval.py, classifiers.py, transfer.py): readers on fixtures in each real format,
the vmapped classifiers against scikit-learn and against themselves run one at a time, SentEval's protocols
against a scikit-learn transcription, and the evaluate CLI on the real data folder (one task, few folds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from sgcl_jax import classifiers, evaluate, senteval, transfer


@pytest.fixture()
def senteval_fixture(tmp_path, write):
    """All seven tasks in SentEval's layout and encodings, a few lines each."""
    root = tmp_path / "senteval"
    for folder, pos, neg in [("MR", "rt-polarity.pos", "rt-polarity.neg"), ("CR", "custrev.pos", "custrev.neg"),
                             ("SUBJ", "subj.objective", "subj.subjective"), ("MPQA", "mpqa.pos", "mpqa.neg")]:
        write(root / folder / pos, "a fine film .\nsplendid\nwell acted , moving and funny\n")
        write(root / folder / neg, "dull\na mess of a movie .\n")
    for split in ("train", "dev", "test"):
        write(root / "SST" / "binary" / f"sentiment-{split}", "it 's a charming journey \t1\nflat and dull \t0\n")
    write(root / "TREC" / "train_5500.label", "DESC:manner How did the caf\xe9 open ?\nNUM:date When was it ?\n",
          encoding="latin-1")
    write(root / "TREC" / "TREC_10.label", "HUM:ind Who is he ?\nLOC:city Where is Paris ?\n")
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = "1\t1\t2\tThe cat sat .\tA cat was sitting .\n0\t3\t4\tStocks fell .\tIt rained in Oslo today .\n"
    for split in ("train", "test"):
        write(root / "MRPC" / f"msr_paraphrase_{split}.txt", "\ufeff" + header + rows)
    return root


def test_readers_on_each_real_format(senteval_fixture, write):
    mr = senteval.load_task("MR", senteval_fixture)
    texts, labels = mr.splits["all"]
    # SentEval's order: by token count, then label; pos = 1 before neg = 0 in file order otherwise.
    assert texts == ["dull", "splendid", "a fine film .", "a mess of a movie .", "well acted , moving and funny"]
    assert labels.tolist() == [0, 1, 1, 0, 1] and mr.protocol == "inner_kfold"
    subj = senteval.load_task("SUBJ", senteval_fixture)
    assert subj.splits["all"][1].tolist() == [0, 1, 1, 0, 1]  # objective is the positive class, as in SentEval
    sst = senteval.load_task("SST2", senteval_fixture)
    assert sst.splits["test"] == (["flat and dull", "it 's a charming journey"], sst.splits["test"][1])
    trec = senteval.load_task("TREC", senteval_fixture)
    assert trec.splits["train"][0] == ["When was it ?", "How did the café open ?"]  # Latin-1 bytes decoded
    assert trec.splits["train"][1].tolist() == [5, 1] and trec.nclasses == 6
    mrpc = senteval.load_task("MRPC", senteval_fixture)
    # Sorted as SentEval sorts MRPC: by the first sentence's token count, then the second's, then the label.
    assert mrpc.splits["test"][0] == [("Stocks fell .", "It rained in Oslo today ."),
                                      ("The cat sat .", "A cat was sitting .")]
    assert mrpc.splits["test"][1].tolist() == [0, 1]
    feats = transfer.task_features(mrpc, lambda sents: {s: np.full(3, len(s), np.float32) for s in sents})
    u, v = 13.0, 25.0
    np.testing.assert_array_equal(feats["test"][0], [abs(u - v)] * 3 + [u * v] * 3)  # [|u - v|, u * v]

    write(senteval_fixture / "SST" / "binary" / "sentiment-dev", "good\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"sentiment-dev:2: expected 'sentence<TAB>0\|1'"):
        senteval.load_task("SST2", senteval_fixture)
    write(senteval_fixture / "TREC" / "TREC_10.label", "HUM:ind Who ?\nFOO:bar What ?\n")
    with pytest.raises(ValueError, match=r"TREC_10\.label:2: expected 'COARSE:fine question'"):
        senteval.load_task("TREC", senteval_fixture)
    write(senteval_fixture / "MRPC" / "msr_paraphrase_train.txt", "\ufeffQuality\ta\tb\tc\td\n1\tonly\n")
    with pytest.raises(ValueError, match=r"msr_paraphrase_train\.txt:2: expected 'label<TAB>id"):
        senteval.load_task("MRPC", senteval_fixture)
    with pytest.raises(senteval.MissingData, match="rt-polarity.pos"):
        senteval.load_task("MR", senteval_fixture / "nowhere")


def _problem(n=240, d=10, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, classes))
    y = np.argmax(x @ w + rng.gumbel(size=(n, classes)), 1).astype(np.int32)
    return x, y


@pytest.mark.parametrize("classes", [2, 4])
def test_logreg_equals_sklearn(classes):
    x, y = _problem(classes=classes)
    fits = classifiers.Fits([], [], [], [])
    cs = (0.25, 2.0, 8.0)
    for c in cs:
        fits.add(np.arange(180), np.arange(180, 240), c, 1)
    params, val, _ = classifiers.run_fits("logreg", x, y, classes, fits)
    for c, p, acc in zip(cs, params, val, strict=True):
        sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x[:180], y[:180])
        coef = sk.coef_.T if classes > 2 else sk.coef_[0][:, None]
        np.testing.assert_allclose(p["w"], coef, atol=2e-3 * np.abs(coef).max())
        np.testing.assert_allclose(p["b"], sk.intercept_, atol=2e-3 * max(1.0, np.abs(sk.intercept_).max()))
        assert acc == pytest.approx(sk.score(x[180:], y[180:]), abs=1e-3)


def test_logreg_reaches_sklearn_objective_on_ill_conditioned_features():
    """Sentence embeddings are nearly collinear: there the coefficients are barely identified, the objective is."""
    rng = np.random.default_rng(7)
    basis = rng.standard_normal((5, 40))
    x = (rng.standard_normal((400, 5)) @ basis + 0.01 * rng.standard_normal((400, 40))).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.standard_normal(400) > 0).astype(np.int32)
    fits = classifiers.Fits([np.arange(400)], [np.arange(0)], [8.0], [1])
    (p,), _, _ = classifiers.run_fits("logreg", x, y, 2, fits)
    sk = LogisticRegression(C=8.0, tol=1e-10, max_iter=100_000).fit(x.astype(np.float64), y)

    def objective(w, b):
        z = x.astype(np.float64) @ w + b
        return 8.0 * np.sum(np.logaddexp(0, z) - y * z) + 0.5 * w @ w

    ours = objective(p["w"][:, 0].astype(np.float64), float(p["b"][0]))
    assert ours == pytest.approx(objective(sk.coef_[0], sk.intercept_[0]), rel=1e-6)


def test_the_configs_names_are_the_registries():
    """config.py names the classifiers and dtypes without importing jax; the registries are what runs them."""
    from sgcl_jax import config, model

    assert config.CLASSIFIERS == tuple(classifiers.CLASSIFIERS) and config.DTYPES == tuple(model.DTYPES)


def test_vmapped_fits_equal_the_same_fits_one_at_a_time():
    x, y = _problem(n=300)
    fits = classifiers.Fits([], [], [], [])
    rng = np.random.default_rng(1)
    for reg in (1e-5, 1e-3, 1e-2):
        rows = rng.permutation(300)
        fits.add(np.sort(rows[:200]), np.sort(rows[200:260]), reg, 1111)
    together, val_together, _ = classifiers.run_fits("mlp", x, y, 2, fits)
    for i in range(len(fits)):
        alone = classifiers.Fits([fits.train[i]], [fits.val[i]], [fits.reg[i]], [fits.seed[i]])
        params, val, _ = classifiers.run_fits("mlp", x, y, 2, alone)
        assert val[0] == val_together[i]
        for k in params[0]:
            np.testing.assert_allclose(params[0][k], together[i][k], rtol=1e-4, atol=1e-5)


def test_penalties_of_one_fold_train_as_one_block_and_equal_each_fit_alone():
    """A search's fits that differ in their penalty only (same rows, same seed) train as one wider network; each
    member is still its own fit: the same validation accuracy and weights as trained alone, its own stop."""
    x, y = _problem(n=300)
    rows = np.random.default_rng(2).permutation(300)
    fits = classifiers.Fits([], [], [], [])
    regs = (1e-5, 1e-3, 1e-2, 3.0)  # the strong penalty stops long before the others
    for seed in (1111, 7):
        for reg in regs:
            fits.add(np.sort(rows[:200]), np.sort(rows[200:260]), reg, seed)
    assert classifiers._blocks(fits, list(range(len(fits)))) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    together, val_together, stats = classifiers.run_fits("mlp", x, y, 2, fits)
    epochs = []
    for i in range(len(fits)):
        alone = classifiers.Fits([fits.train[i]], [fits.val[i]], [fits.reg[i]], [fits.seed[i]])
        params, val, one = classifiers.run_fits("mlp", x, y, 2, alone)
        epochs.append(one.iterations)
        assert val[0] == val_together[i]
        for k in params[0]:
            np.testing.assert_allclose(params[0][k], together[i][k], rtol=1e-4, atol=1e-5)
    assert len(set(epochs)) > 1 and stats.iterations == max(epochs)  # the members stopped at their own epochs


def test_finished_mlp_fits_stop_costing(monkeypatch):
    """Fits that stop early cost nothing more, in both layouts: one block per call, the calls spread over threads
    (the CPU's), or the blocks vmapped, the ones still running going on narrower (an accelerator's). Both give the
    results of one vmapped program that runs every fit until the slowest stops (segments off), which executes far
    more work."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(600) > 0).astype(np.int32)
    fits = classifiers.Fits([], [], [], [])
    for i in range(24):  # a strong L2 penalty flattens the net: those fits stop at the first tenacity
        rows = rng.permutation(600)
        fits.add(np.sort(rows[:400]), np.sort(rows[400:500]), (1e-5, 10.0, 10.0, 10.0)[i % 4], 1111 + i)
    runs, segment = [], classifiers.SEGMENT_CHECKS
    for threads, checks in ((2, segment), (1, segment), (1, 10_000)):  # per block; vmapped; vmapped, segments off
        monkeypatch.setattr(classifiers, "_threads", lambda t=threads: t)
        monkeypatch.setattr(classifiers, "SEGMENT_CHECKS", checks)
        classifiers._mlp_programs.cache_clear()
        runs.append(classifiers.run_fits("mlp", x, y, 2, fits))
    classifiers._mlp_programs.cache_clear()
    *layouts, (params_whole, val_whole, whole) = runs
    for params, val, stats in layouts:
        np.testing.assert_array_equal(val, val_whole)
        for a, b in zip(params, params_whole, strict=True):
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
        assert stats.flops == whole.flops and stats.executed_flops <= 1.25 * stats.flops
        assert whole.executed_flops > 1.4 * stats.executed_flops  # the fits stop at very different epochs


def senteval_inner_kfold_logreg(x, y, k):
    """SentEval's InnerKFoldClassifier with scikit-learn's LogisticRegression, transcribed (solved to convergence)."""
    regs = [2.0**t for t in range(-2, 4)]
    tests, devs = [], []
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=1111).split(x, y):
        scores = []
        for reg in regs:
            inner = [LogisticRegression(C=reg, tol=1e-10, max_iter=10_000).fit(x[tr][a], y[tr][a]).score(x[tr][b],
                                                                                                      y[tr][b])
                     for a, b in StratifiedKFold(k, shuffle=True, random_state=1111).split(x[tr], y[tr])]
            scores.append(round(100 * np.mean(inner), 2))
        best = regs[int(np.argmax(scores))]
        devs.append(max(scores))
        clf = LogisticRegression(C=best, tol=1e-10, max_iter=10_000).fit(x[tr], y[tr])
        tests.append(round(100 * clf.score(x[te], y[te]), 2))
    return np.mean(devs), np.mean(tests)


def test_inner_kfold_protocol_matches_sklearn_transcription():
    x, y = _problem(n=160, d=6, seed=3)
    task = senteval.TransferTask("toy", "inner_kfold", 2, {"all": ([str(i) for i in range(160)], y)})
    out, stats = transfer.cross_validate(task, {"all": x}, "logreg", 3, [1111])
    dev, test = senteval_inner_kfold_logreg(x, y, 3)
    assert out["score"] == pytest.approx(test, abs=1e-3) and out["dev"] == pytest.approx(dev, abs=1e-3)
    assert stats.fits == 3 * 6 * 3 + 3 and out["fits"] == stats.fits
    # The folds are scikit-learn's StratifiedKFold(shuffle=True, random_state=...).
    ours = transfer._stratified(3, 1111, y)
    theirs = list(StratifiedKFold(3, shuffle=True, random_state=1111).split(x, y))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ours, theirs, strict=True))


def test_kfold_protocol_reports_accuracy_and_f1_per_seed():
    x, y = _problem(n=200, d=6, seed=4)
    xt, yt = _problem(n=60, d=6, seed=5)
    task = senteval.TransferTask("pairs", "kfold", 2, {"train": ([""] * 200, y), "test": ([""] * 60, yt)})
    out, stats = transfer.cross_validate(task, {"train": x, "test": xt}, "mlp", 3, [1, 2])
    assert set(out["per_seed"]) == {"1", "2"} and 0 <= out["f1"] <= 100 and out["metric"] == "accuracy"
    assert out["std"] == pytest.approx(np.std(list(out["per_seed"].values()), ddof=1))
    assert stats.fits == 2 * (4 * 3 + 1) and stats.flops > 0 and stats.executed_flops >= stats.flops


@pytest.mark.slow
def test_cli_scores_transfer_tasks_and_reports_missing(senteval_dir, tmp_path, capsys, write):
    # The real TREC files cut to their first lines (read as bytes: Latin-1), beside a small STS-format folder.
    sub = tmp_path / "senteval"
    for name, lines in (("train_5500.label", 600), ("TREC_10.label", 200)):
        write(sub / "TREC" / name, b"".join((senteval_dir / "TREC" / name).read_bytes().splitlines(True)[:lines]))
    write(tmp_path / "pairs" / "STS.input.toy.txt", "".join(f"a cat sat {i}\ta cat sat {i}!\n" for i in range(6)))
    write(tmp_path / "pairs" / "STS.gs.toy.txt", "5\n4\n3\n2\n1\n0")
    out = tmp_path / "r.json"
    rc = evaluate.main(["--model", "minilm", "--tasks", f"TREC,{tmp_path / 'pairs'}", "--senteval-dir", str(sub),
                        "--kfold", "2", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    trec = res["tasks"]["TREC"]
    assert trec["metric"] == "accuracy" and 50 < trec["score"] <= 100 and trec["n"] == 800
    assert res["averages"]["transfer"]["tasks"] == ["TREC"] and res["tasks"][str(tmp_path / "pairs")]["n"] == 6
    assert set(res["averages"]) == {"transfer", "folder"}  # kinds are averaged apart
    assert res["protocol"]["transfer_kfold"] == 2 and "transfer_classifier" in res["protocol"]
    rc = evaluate.main(["--model", "minilm", "--tasks", "MR,TREC", "--senteval-dir", str(tmp_path / "empty"),
                        "--kfold", "2"])
    assert rc == 1 and "missing" in capsys.readouterr().out


def test_a_sentences_vector_does_not_depend_on_the_sentences_encoded_with_it(tiny):
    # Transfer features are encoded once for all tasks asked: SST2's vectors alone and among the seven tasks'
    # sentences must be the same bits (they differed in the last bits and flipped SST2's dev choice of C).
    from sgcl_jax.encoder import SentenceEncoder

    rng = np.random.default_rng(0)
    words = ["movie", "good", "a", "plot", "the", "was", "not", "very", "actors", "long", "and", "of"]
    sentences = [" ".join(rng.choice(words, rng.integers(1, 60))) for _ in range(200)]
    ask, others = sentences[:100], sentences[100:]
    enc = SentenceEncoder(tiny.config, tiny.params, tiny.tokenizer, 128, pooling="cls")
    alone = enc.encode(ask, batch_size=16)
    among = enc.encode(others[:50] + ask + others[50:], batch_size=16)[50:150]
    np.testing.assert_array_equal(alone, among)
