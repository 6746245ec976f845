"""Ahead-of-time compilation for TPU topologies on this CPU machine: the compiler's own analyses of the trainer's
step (libtpu describes the chips; nothing runs). Oracles: MaxText's topology table, libtpu's device list, the
compiler's memory and cost analyses and its HLO, and the sizes the design implies."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed")

from sgcl_jax import losses, pod, topologies  # noqa: E402
from sgcl_jax.sharding import DATA, Layout, make_mesh  # noqa: E402

TOPOLOGIES = {  # user name -> (JAX name, wrap) as in MaxText's accelerator_to_spec_map.py
    "v5e-8": ("v5e:2x4", (False, False, False)), "v5e-128": ("v5e:8x16", (False, True, False)),
    "v5e-256": ("v5e:16x16", (True, True, False)), "v6e-256": ("v6e:16x16", (True, True, False)),
    "v4-8": ("v4:2x2x1", (False, False, False)), "v4-32": ("v4:2x2x4", (False, False, False)),
    "v4-128": ("v4:4x4x4", (True, True, True)), "v5p-8": ("v5:2x2x1", (False, False, False)),
    "v5p-128": ("v5:4x4x4", (True, True, True)),
}


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_topology_names_follow_maxtext(name):
    t = topologies.resolve_topology(name)
    assert (t.topology, t.wrap) == TOPOLOGIES[name]
    assert topologies.resolve_topology(t.topology).topology == t.topology  # JAX's form names the same slice
    assert t.chip_config == {"v4": "megacore_dense", "v5": "megacore"}.get(t.topology.split(":")[0], "default")


def test_unknown_topologies_are_refused():
    for bad in ("v5e-7", "v9-8", "v5e:2x2x2", "tpu"):
        with pytest.raises(ValueError, match="--topology"):
            topologies.resolve_topology(bad)


def test_libtpu_describes_the_slices():
    v4 = topologies.topology_devices(topologies.resolve_topology("v4-8"))  # 8 TensorCores = 4 megacore chips
    assert len(v4) == 4 and v4[0].device_kind == "TPU v4" and topologies.chip_of(v4[0]).name == "TPU v4"
    v5e = topologies.topology_devices(topologies.resolve_topology("v5e:2x2"), num_slices=2)
    assert len(v5e) == 8 and {d.slice_index for d in v5e} == {0, 1}
    assert topologies.chip_of(v5e[0]).name == "TPU v5e"


def _report(tiny_config, topology, batch, slices=1, encoder=False, **overrides):
    return pod.report(tiny_config(**overrides), topologies.resolve_topology(topology), slices, batch, encoder=encoder)


@pytest.fixture(scope="module")
def reports(tiny_config):
    """The tiny config's step compiled for a v5e 2x2 slice (with the encoder) and a v4 2x2x1 slice, 4 a device."""
    return {"v5e:2x2": _report(tiny_config, "v5e:2x2", 4, encoder=True), "v4:2x2x1": _report(tiny_config, "v4-8", 4)}


def test_the_only_collectives_are_the_gradients_and_the_global_batch(reports):
    for r in reports.values():
        ops = r["collectives"]["ops"]
        roles = {op["role"].split(":")[0] for op in ops}
        assert roles == {"gradients", "negatives", "loss"}, roles
        grad = sum(op["bytes"] for op in ops if op["role"].startswith("gradients"))
        trainable = r["params"]["trainable"]["bytes"]  # fp32 gradients of every trainable param, plus scalars
        assert 0 <= grad - trainable <= 64, (grad, trainable)
        gb, feature = r["mesh"]["global_batch"], 64  # tiny: head_dim 64
        negatives = [op for op in ops if op["role"].startswith("negatives")]
        assert any(op["op"] in ("all-gather", "all-reduce") for op in negatives)
        for op in negatives:  # each moves a whole number of the global batch's feature vectors (bf16 or fp32)
            assert op["bytes"] % (gb * feature * 2) == 0, op
        assert all(op["group_size"] == r["target"]["devices"] and not op["crosses_slices"] for op in ops)


def test_report_sections(reports):
    r = reports["v5e:2x2"]
    mem, cost, roof = r["memory"], r["cost"], r["roofline"]
    assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                                  + mem["temp_bytes"] + mem["generated_code_bytes"])
    assert mem["alias_bytes"] > 0  # the state is donated: its buffers are reused for the new state
    assert mem["hbm_bytes"] == 16 * 2**30 and mem["fits"]
    assert cost["flops"] > 0 and cost["analytic_flops"] > 0 and cost["ratio"] == cost["flops"] / cost["analytic_flops"]
    assert roof["step_s"] == max(roof["compute_s"], roof["hbm_s"], roof["ici_s"]) > 0
    assert roof["sentences_per_s"] == pytest.approx(16 / roof["step_s"])
    assert r["encoder"]["memory"]["fits"] and r["encoder"]["batch"] == 64
    assert r["params"]["optimizer_state"]["count"] == 2 * r["params"]["trainable"]["count"] + 2  # Adam mu, nu; counts
    text = pod.format_report(r)
    assert "compiled, not run" in text and "of 16.00 GiB HBM" in text and ": fits" in text and "libtpu 0.0.42" in text


@pytest.mark.slow
def test_per_device_flops_do_not_grow_with_the_chip_count(tiny_config, reports):
    small, large = reports["v5e:2x2"], _report(tiny_config, "v5e:2x4", 4)
    assert large["cost"]["flops"] == pytest.approx(small["cost"]["flops"], rel=0.05)
    assert reports["v4:2x2x1"]["cost"]["flops"] == pytest.approx(small["cost"]["flops"], rel=0.05)
    assert large["mesh"]["global_batch"] == 2 * small["mesh"]["global_batch"]


@pytest.mark.slow
def test_memory_grows_with_the_batch(tiny_config, reports):
    big, small = _report(tiny_config, "v5e:2x2", 64), reports["v5e:2x2"]
    # at least the guide's hidden states of 60 more sentences (3 layers x 32 tokens x 32 wide, fp32)
    assert big["memory"]["temp_bytes"] - small["memory"]["temp_bytes"] >= 60 * 3 * 32 * 32 * 4
    assert big["memory"]["argument_bytes"] > small["memory"]["argument_bytes"]  # the batch is an argument
    assert big["cost"]["flops"] == pytest.approx(16 * small["cost"]["flops"], rel=0.1)


def test_the_global_logits_are_not_padded_by_the_tpu_tiling():
    """SG-OPT's B x B x K logits with the K views minor made the TPU compiler tile K to 128 lanes: 234 MiniLM
    sentences a device was the most v5e-256 could hold (312 asked for 24.85 GB of temporaries, for 0.70 GB of
    logits). Kept 2-D, the loss's gradient needs about one buffer of the per-device logits (the old layout 4.8
    here) and reads about 9 (69 with the positives gathered from the logits by take_along_axis: a scatter in the
    gradient, a quarter of the whole step's HBM traffic on v6e-256 at the paper's batch)."""
    devices = topologies.topology_devices(topologies.resolve_topology("v5e:2x2"))
    rows = NamedSharding(make_mesh(devices=devices), P(DATA))  # the trainer's mesh, the batch split as it splits it
    b, k, d = 4096, 7, 128
    grad = jax.jit(jax.grad(lambda c, h: losses.sg_opt(c, h, 0.01), argnums=(0, 1)),
                   in_shardings=(rows, rows), out_shardings=(rows, rows))
    compiled = grad.lower(jax.ShapeDtypeStruct((b, d), jnp.float32),
                          jax.ShapeDtypeStruct((b, k, d), jnp.float32)).compile()
    logits_per_device = b // len(devices) * b * k * 4
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * logits_per_device
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["bytes accessed"] < 20 * logits_per_device, cost["bytes accessed"] / logits_per_device


@pytest.mark.slow
def test_fsdp_shards_params_and_adds_their_gathers(tiny_config):
    wide = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
            "max_position_embeddings": 128, "vocab_size": 30522}
    fsdp = _report(tiny_config, "v5e:2x2", 4, **{"model.random": wide, "model.head_dim": 128, "mesh.fsdp": True})
    rep = fsdp["replicated_memory"]  # the same step with replicated params, compiled alongside
    assert fsdp["params"]["trainable"]["bytes_per_device"] < 0.5 * fsdp["params"]["trainable"]["bytes"]
    assert fsdp["memory"]["argument_bytes"] < 0.5 * rep["argument_bytes"]
    roles = {op["role"].split(":")[0] for op in fsdp["collectives"]["ops"]}
    assert {"parameters", "gradients", "negatives"} <= roles, roles
    assert "all-gather" in fsdp["collectives"]["by_opcode"]  # the weights, gathered where they are used
    assert "the same step with replicated params" in pod.format_report(fsdp)
    assert "FSDP needs more" not in pod.format_report(fsdp)  # at 4 a device the sharded weights save more
    # past a few tens of sentences a device the replicated layout needs less; the report then says what helps
    worse = {**fsdp, "replicated_memory": {**rep, "total_bytes": fsdp["memory"]["total_bytes"] - 1}}
    assert "try --config.model.remat=True" in pod.format_report(worse)
    assert "FSDP needs more" not in pod.format_report({**worse, "mesh": {**worse["mesh"], "remat": True}})
    # ZeRO-3 moves weights, never the sentences: no token ids or hidden states (the embedding table, split by
    # feature since 30522 rows do not divide by 4, is gathered whole instead of looked up piecewise).
    moved = [op for op in fsdp["collectives"]["ops"] if op["role"].startswith("activations")]
    assert not moved, moved


@pytest.mark.slow
def test_multi_slice_separates_what_crosses_the_slices(tiny_config):
    r = _report(tiny_config, "v5e:2x2", 4, slices=2)
    assert r["target"]["slices"] == 2 and r["mesh"]["axes"]["data"] == 8
    crossing = [op for op in r["collectives"]["ops"] if op["crosses_slices"]]
    assert crossing and r["roofline"]["dcn_s"] > 0
    assert "cross slices" in pod.format_report(r)


def test_max_batch_search_finds_the_boundary():
    devices = topologies.topology_devices(topologies.resolve_topology("v5e:2x2"))
    hbm = 16 * 2**30
    for power, most in ((1.0, 6), (0.8, 7), (1.3, 10)):  # memory linear, flattening, or growing near the top
        for limit_batch in (3, 700, 1234, 50_000):
            calls = []

            def fake(cfg, devs, b, what, limit_batch=limit_batch, power=power, calls=calls):
                calls.append(b)
                mem = 2**30 + (hbm - 2**30) * (b / limit_batch) ** power
                return b <= limit_batch, (mem if b <= limit_batch else None)

            found = pod.max_batch(None, devices, "step", start=8, fits_fn=fake)
            best, bad = found["max_per_device_batch"], found["first_failing"]
            assert best <= limit_batch < bad <= best + max(1, best // 32), (limit_batch, found)
            assert len(calls) == len(set(calls)) == found["compiles"] <= most, (power, limit_batch, found)
            # Killed after its third compile: the search goes on from those answers and compiles none again.
            known = {b: fake(None, None, b, "step") for b in calls[:3]}
            calls.clear()
            again = pod.max_batch(None, devices, "step", start=8, fits_fn=fake, known=known)
            assert again["max_per_device_batch"] <= limit_batch < again["first_failing"], again
            assert not set(calls) & set(known) and again["compiles"] <= most + 1, (known, calls, again)

    # Another target's search (the same step on a smaller pod of the same chip, or on a chip with twice the HBM)
    # aims the first compiles: the answer is the same and comes in a few compiles.
    v4 = topologies.topology_devices(topologies.resolve_topology("v4-8"))
    for limit_batch in (700, 1234, 50_000):
        def linear(cfg, devs, b, what, limit_batch=limit_batch, extra=1.0):
            mem = 2**30 + (hbm - 2**30) * b / limit_batch * extra
            return mem <= pod.chip_of(devs[0]).hbm_gib * 2**30, mem
        seen = pod.max_batch(None, devices, "step", start=8, fits_fn=linear)
        for devs, extra in ((devices, 1.03), (v4, 0.97)):
            fake = functools.partial(linear, extra=extra)
            found = pod.max_batch(None, devs, "step", start=8, fits_fn=fake,
                                  prior={int(b): m for b, m in seen["bytes"].items()})
            alone = pod.max_batch(None, devs, "step", start=8, fits_fn=fake)
            best, bad = found["max_per_device_batch"], found["first_failing"]
            assert fake(None, devs, best, "")[0] and not fake(None, devs, bad, "")[0], found
            assert bad - best <= max(1, best // 32) and abs(best - alone["max_per_device_batch"]) <= best // 32
            assert found["compiles"] <= min(4, alone["compiles"]), (limit_batch, extra, found, alone)

    for limit_batch in (85, 100, 180):  # bert-large on v5e-8: the compiler rematerialises near the limit
        def flattening(cfg, devs, b, what, limit_batch=limit_batch):
            mem = {8: 6.71, 16: 7.77, 72: 14.33, 81: 14.34}.get(b, 14.35) * 2**30
            return b <= limit_batch, (mem if b <= limit_batch else None)

        found = pod.max_batch(None, devices, "step", start=8, resolution=8, fits_fn=flattening)
        best, bad = found["max_per_device_batch"], found["first_failing"]
        assert best <= limit_batch < bad <= best + max(1, best // 8) and found["compiles"] <= 9, found

    # Memory that falls from one fitting compile to the next (bert-large on v6e-256 with FSDP: 28.97 GiB at 307 a
    # device, 28.72 at 345) gives no line to the limit: the search aims by the prior's line, or by the mean bytes
    # a sentence without one, and never jumps to the search's own limit (the line's floor of a byte a sentence
    # once aimed at 131,072 and compiled refusals down from there).
    for limit_batch in (40, 400):
        def dips(cfg, devs, b, what, limit_batch=limit_batch):
            mem = (2 + 12 * (8 if b == 16 else b) / limit_batch - (0.25 if b == 16 else 0)) * 2**30
            return b <= limit_batch, (mem if b <= limit_batch else None)

        calls = []
        # the prior: the same step on another target, 3 % more memory a sentence
        for prior in (None, {b: 1.03 * dips(None, None, b, "")[1] for b in (limit_batch // 4, limit_batch // 2)}):
            calls.clear()
            found = pod.max_batch(None, devices, "step", start=8, resolution=8, prior=prior,
                                  fits_fn=lambda *a, calls=calls: calls.append(a[2]) or dips(*a),
                                  known={8: dips(None, None, 8, ""), 16: dips(None, None, 16, "")})
            best, bad = found["max_per_device_batch"], found["first_failing"]
            assert best <= limit_batch < bad <= best + max(1, best // 8), (prior, found)
            assert max(calls) <= 4 * limit_batch and len(calls) <= 6, (prior, calls)


def test_the_compile_log_answers_a_program_compiled_before(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config()
    v5e, v4 = (topologies.topology_devices(topologies.resolve_topology(t)) for t in ("v5e:2x2", "v4-8"))
    path = tmp_path / "search.compiles.jsonl"
    first = pod.fits(cfg, v5e, 4, compile_log=pod.CompileLog(path))
    assert first[0] is True and first[1] > 0
    row = json.loads(path.read_text().splitlines()[-1])  # how long it took, to plan a search, and its memory
    assert row["seconds"] > 0 and row["memory"]["total_bytes"] == first[1] > row["memory"]["temp_bytes"] > 0
    compiled = []

    def refuse(lowered):  # what is compiled from here on is only counted
        compiled.append(lowered)
        raise pod.DoesNotFit("Used 99G of 16G hbm")

    monkeypatch.setattr(pod, "_compile", refuse)
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a kill while writing
    again = pod.CompileLog(path)  # a new process reads the file
    assert pod.fits(cfg, v5e, 4, compile_log=again) == first and compiled == []
    # Another program (another batch; the same step and batch on another target of 4 devices) is compiled, and
    # its answer kept.
    assert pod.fits(cfg, v5e, 5, compile_log=again) == (False, None)
    assert pod.fits(cfg, v4, 4, compile_log=again) == (False, None)
    assert len(compiled) == 2 and list(pod.CompileLog(path).answers.values()) == [first] + [(False, None)] * 2
    assert json.loads(path.read_text().splitlines()[-1])["compiler"] == "Used 99G of 16G hbm"
    assert pod.fits(cfg, v5e, 6, compile_log=again, compile=False) is None and len(compiled) == 2
    # A compile killed once (its search was stopped, or the host ran out of memory) left only its "started"
    # line: it is tried once more. Killed twice, it counts as not fitting and is not tried again.
    key = pod.CompileLog.key(pod.lower_step(pod.program(cfg, v5e, 6))[0], v5e)
    again.start(key, 6, "step")
    after_kill = pod.CompileLog(path)
    assert list(after_kill.died.values()) == [(6, "step", 1)] and after_kill.batches["step"] == {4, 5, 6}
    assert not after_kill.killed(key) and pod.fits(cfg, v5e, 6, compile_log=after_kill, compile=False) is None
    again.start(key, 6, "step")
    after_two = pod.CompileLog(path)
    assert after_two.killed(key) and pod.fits(cfg, v5e, 6, compile_log=after_two) == (False, None)
    assert len(compiled) == 2


@pytest.mark.slow
def test_cli_does_not_fit_exits_2(tmp_path, capsys):
    from sgcl_jax import aot

    out = tmp_path / "r.json"
    code = aot.main(["--config", "tiny", "--topology", "v5e-4", "--batch-per-device", "4000000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("does not fit: ") and "hbm" in line.lower(), line
    saved = json.loads(out.read_text())
    assert saved["fits"] is False and "hbm" in saved["compiler"].lower()


@pytest.mark.slow
def test_cli_report_json(tmp_path, capsys):
    from sgcl_jax import aot

    out = tmp_path / "r.json"
    code = aot.main(["--config", "tiny", "--topology", "v4-8", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    saved = json.loads(out.read_text())
    assert saved["label"] == "compiled, not run" and saved["target"]["jax_topology"] == "v4:2x2x1"
    assert saved["target"]["libtpu"] != "not installed" and saved["memory"]["fits"] is True
    assert "TPU v4" in printed.out and "roofline" in printed.out


def test_fsdp_splits_the_largest_divisible_axis():
    layout = Layout(make_mesh(devices=topologies.topology_devices(topologies.resolve_topology("v5e-8"))), fsdp=True)
    assert layout.spec((30522, 768)) == P(None, "data")  # 30522 does not divide by 8
    assert layout.spec((3072, 768)) == P("data", None)
    assert layout.spec((768,)) == P()  # small arrays stay replicated
    assert Layout(layout.mesh).spec((3072, 768)) == P()  # the replicated layout


def test_a_prior_is_read_from_a_search_report(tmp_path):
    good, old, bad = tmp_path / "good.json", tmp_path / "old.json", tmp_path / "bad.json"
    step = {"max_per_device_batch": 16, "tried": {"8": True, "16": True, "32": False}}
    good.write_text(json.dumps({"max_batch": {"step": {**step, "bytes": {"8": 2.0e9, "16": 3.0e9}}}}))
    old.write_text(json.dumps({"max_batch": {"step": step}}))  # a search from before bytes were kept
    bad.write_text("{")
    assert pod.read_prior(str(good), "step") == {8: 2.0e9, 16: 3.0e9} and pod.read_prior(None, "step") is None
    assert pod.can_aim(pod.read_prior(good)) and not pod.can_aim({8: 2.0e9}) and not pod.can_aim(None)
    for path in (old, bad):
        with pytest.raises(ValueError, match=str(path)):
            pod.read_prior(str(path), "step")
    with pytest.raises(ValueError, match="'encoder'"):
        pod.read_prior(str(good), "encoder")


def test_a_shape_both_a_weights_and_the_global_batchs_is_not_guessed():
    from sgcl_jax.hlo_analysis import _role

    head = frozenset({(768, 4096), (4096, 4096), (4096,)})
    one = [("f32", (768, 4096))]
    # bert-base's head kernel is 768 x 4096; so are 768 sentences' projections: the HLO cannot tell them apart
    assert _role("all-reduce", one, 768, 4096, head).startswith("gradients or negatives")
    assert _role("all-reduce", one, 16, 4096, head).startswith("gradients:")
    assert _role("all-reduce", [("f32", (16, 4096))], 16, 4096, head).startswith("negatives")
    # a fused gradient reduction holding the kernel and its bias is gradients; a gather is always the weights
    assert _role("all-reduce", [*one, ("f32", (4096,))], 768, 4096, head).startswith("gradients:")
    assert _role("all-gather", one, 768, 4096, head).startswith("parameters")


def test_a_tpu_program_the_compiler_admitted_fits_even_when_the_sum_exceeds_hbm():
    from types import SimpleNamespace

    from sgcl_jax.hlo_analysis import memory

    gib = 2**30
    # bert-base, FSDP + remat, 836 a device on v5e: compiled (the TPU compiler refuses what it cannot place), yet
    # argument + output - alias + temp + code came to 16.30 GiB of 16.
    stats = SimpleNamespace(argument_size_in_bytes=gib, output_size_in_bytes=gib, alias_size_in_bytes=gib,
                            temp_size_in_bytes=15 * gib + gib // 4, generated_code_size_in_bytes=gib // 20)
    compiled = SimpleNamespace(memory_analysis=lambda: stats)
    v5e, h200 = (next(c for c in topologies.CHIPS if c.name == n) for n in ("TPU v5e", "H200"))
    on_tpu, on_gpu = memory(compiled, v5e), memory(compiled, h200)
    assert on_tpu["total_bytes"] == pytest.approx(16.3 * gib, abs=1) and on_tpu["sum_over_hbm"] and on_tpu["fits"]
    assert on_tpu["headroom"] < 0
    assert not on_gpu["sum_over_hbm"] and on_gpu["fits"]  # 141 GB
    stats.temp_size_in_bytes = 200 * gib  # a GPU compiler does not refuse: the sum decides there
    assert not memory(compiled, h200)["fits"] and memory(compiled, v5e)["fits"]


def test_the_compilers_out_of_memory_sentence_is_cut_where_it_ends():
    # As libtpu printed it for MiniLM, FSDP + remat, 3,072 a device on v5e-8: the traceback's first line glued on.
    glued = ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory on "
             "HBM, the total memory required for HLO temporaries (19.70G) exceeds available HBM (15.75G).Traceback "
             "(most recent call last):\n  File \"x.py\", line 1")
    assert pod.hbm_line(glued) == ("Ran out of memory on HBM, the total memory required for HLO temporaries "
                                   "(19.70G) exceeds available HBM (15.75G).")
    used = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm. Exceeded hbm.\nx"
    assert pod.hbm_line(used) == used.splitlines()[0]


def test_a_compile_stopped_by_sigterm_is_logged_as_interrupted_not_as_a_death(tmp_path, subprocess_env):
    # A session's end or Ctrl-C stops a search midway through a compile of tens of minutes: the compile must not
    # count toward the two deaths that mark a batch as not fitting (only SIGKILL and the OOM killer do).
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "search.compiles.jsonl"
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from sgcl_jax import pod
log = pod.CompileLog({str(path)!r})
log.start("k", 64, "step")
pod._compile_or_interrupt(lambda: time.sleep(600), lambda sig: log.interrupted("k", 64, "step", sig))
"""], env=subprocess_env)
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the wait for the compile thread
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM and time.monotonic() - t0 < 30  # not after the "compile"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"key": "k", "batch": 64, "what": "step", "started": True},
                    {"key": "k", "batch": 64, "what": "step", "interrupted": "SIGTERM"}]
    resumed = pod.CompileLog(path)
    assert resumed.died == {} and not resumed.killed("k") and resumed.batches["step"] == {64}
    resumed.start("k", 64, "step")  # then killed for real, twice: not fitting, as before
    resumed.start("k", 64, "step")
    assert pod.CompileLog(path).killed("k")
    # A compile that answers returns its answer, and one that raises raises in the caller.
    assert pod._compile_or_interrupt(lambda: (True, 1.0, {}), lambda sig: None) == (True, 1.0, {})
    with pytest.raises(pod.DoesNotFit, match="hbm"):
        pod._compile_or_interrupt(lambda: (_ for _ in ()).throw(pod.DoesNotFit("Used 99G of 16G hbm")), print)
