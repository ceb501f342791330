"""Smoke tests of the benchmark scripts: they run and their tables are complete (no timings)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matcher_benchmark_quick_run_on_this_backend(tmp_path, capsys):
    benchmark = _load("matcher_benchmark")
    backend = keras.backend.backend()
    out = tmp_path / "matcher.json"
    records = benchmark.main(["--quick", "--backends", backend, "--json", str(out)])
    assert records and all("error" not in r for r in records), records
    assert json.loads(out.read_text()) == records
    for record in records:
        assert record["backend"] == backend
        assert record["exact"] is True, record
        for key in ("first_call_s", "ours_s", "scipy_s", "scipy_callback_s", "ratio",
                    "callback_ratio", "iterations"):
            assert record[key] > 0, (key, record)
        assert record["ratio"] == record["ours_s"] / record["scipy_s"], record
        # The previous solver (from git history, when there is one) runs beside it.
        if "previous_iterations" in record:
            assert record["previous_iterations"] > 0, record
    assert {r["case"] for r in records} == {"10x6", "detr step 2x6"}
    assert "ours/loop" in capsys.readouterr().out


def test_igpt_generation_benchmark_quick_run_on_this_backend(tmp_path, capsys):
    benchmark = _load("igpt_generation_benchmark")
    backend = keras.backend.backend()
    out = tmp_path / "igpt.json"
    records = benchmark.main(["--quick", "--backend", backend, "--json", str(out)])
    assert [r["mode"] for r in records] == ["cached", "uncached"]
    assert json.loads(out.read_text()) == records
    for record in records:
        assert record["backend"] == backend and record["sequence_length"] == 16
        assert record["same"] is True, record
        for key in ("first_call_s", "median_s", "speedup", "pixels_per_s"):
            assert record[key] > 0, (key, record)
    assert "uncached/cached" in capsys.readouterr().out


# --- The side-by-side suite (benchmarks/run_benchmarks.py) -------------------------------

# PyTorch's session (eager steps: the cheapest to run) smoke-tests every case in both
# precisions, with the transformers reference beside it; JAX's and TensorFlow's sessions
# run the cases that exercise their own code paths (the compiled train function, the
# compiled forward pass, sampling) in one precision each, since every compiled DETR or CLIP
# step costs them tens of seconds on a CPU.
SMOKE = {"jax": (["float32"], ["vit_ti16_train", "vit_ti16_infer", "igpt_s_sample"]),
         "tensorflow": (["bfloat16"], ["vit_ti16_train", "vit_ti16_infer", "igpt_s_sample"]),
         "torch": (["bfloat16", "float32"], None)}


def _suite():
    import sys

    path = os.path.join(REPO, "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    return _load("run_benchmarks")


def test_suite_smoke_run_on_this_backend(tmp_path, capsys):
    suite = _suite()
    from vtx_bench import cases as cases_lib

    backend = keras.backend.backend()
    precisions, keys = SMOKE[backend]
    references = "transformers" if backend == "torch" else "none"
    meta, records = suite.main([
        "--size", "tiny", "--backends", backend, "--references", references,
        "--precisions", ",".join(precisions), "--steps", "1", "--warmup", "0",
        "--repeats", "2", "--out", str(tmp_path), "--profile", str(tmp_path / "traces"),
        "--profile-steps", "1"] + (["--cases", ",".join(keys)] if keys else []))
    implementations = [f"keras_vtx[{backend}]"] + ([] if references == "none" else ["transformers"])
    cases = [c for c in cases_lib.all_cases("tiny") if keys is None or c.key in keys]
    expected = {(c.key, p, i) for c in cases for p in precisions for i in implementations}
    assert {(r["case"], r["precision"], r["implementation"]) for r in records} == expected
    errors = [(r["case"], r["implementation"], r.get("error")) for r in records
              if "throughput" not in r]
    assert not errors, errors
    forward = meta["forward_flops"]
    assert set(forward) == {c.key for c in cases if c.mode != "sample"}
    by_key = {(r["case"], r["precision"], r["implementation"]): r for r in records}
    for r in records:
        assert r["throughput"] > 0 and r["step_s"] > 0 and r["first_call_s"] > 0, r
        assert len(r["step_times_s"]) == 2
        assert r["device"] and r["measured_peak"] > 0
        if r["mode"] == "sample":
            assert r["mfu"] is None
        else:
            # MFU is FLOPs per step / step time / peak, the step 3 x forward when training.
            flops = forward[r["case"]] * (3 if r["mode"] == "train" else 1)
            assert r["flops_per_step"] == flops
            assert r["mfu"] == pytest.approx(flops / r["step_s"] / r["peak_flops"])
            # A CPU is not in the peak table: the measured matmul peak stands in.
            if r["peak_source"] == "measured matmul":
                assert r["peak_flops"] == r["measured_peak"]
            else:
                assert r["peak_source"] == "table" and r["peak_flops"] >= 1e13
        if r["implementation"].startswith("keras_vtx") and r["mode"] != "sample":
            # The attention kernel the step ran (JAX's answer is recorded while tracing;
            # cuDNN's fused attention needs a GPU, so XLA's on this CPU).
            assert r["attention"] == {"jax": "xla", "tensorflow": "xla",
                                      "torch": "sdpa"}[backend], r
        if r["case"] == "detr_r50_train" and r["implementation"].startswith("keras_vtx"):
            assert 0 < r["loss_fraction"] and r["loss_s"] > 0
            # Both matchers are timed on the same predictions, the other one beside.
            assert {r["matcher"], r["other_matcher"]} == {"graph", "scipy"}, r
            assert r["other_loss_fraction"] == r["other_loss_s"] / r["step_s"] > 0, r
        if references != "none" and r["implementation"].startswith("keras_vtx"):
            other = by_key[(r["case"], r["precision"], "transformers")]
            assert r["vs_transformers"] == pytest.approx(r["throughput"] / other["throughput"])
        _check_profile(r, backend, tmp_path / "traces")
    saved = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(saved["meta"]) >= {"date", "device", "versions", "size", "forward_flops"}
    assert saved["meta"]["versions"]["keras"] == keras.__version__
    table = (tmp_path / "benchmarks.md").read_text()
    main_table, profile_table = table.split("Where the step time goes")
    rows = [line for line in main_table.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| case | precision | implementation | throughput")
    assert len(rows) == 1 + len(records)
    profiled = [r for r in records if r["mode"] != "sample"]
    rows = [line for line in profile_table.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| case | precision | implementation | profiled | kernel time")
    assert len(rows) == 1 + len(profiled)
    assert table in capsys.readouterr().out


def _check_profile(record, backend, folder):
    """`--profile`: a trace per training/inference row, summarised consistently."""
    _suite()
    from vtx_bench import profile

    if record["mode"] == "sample":
        assert "profile" not in record
        return
    p = record["profile"]
    if record["implementation"] == "keras_vtx[tensorflow]":
        assert "not profiled" in p["error"]
        return
    assert "error" not in p, p
    assert p["source"] == "host" and p["events"] > 0  # no accelerator here
    assert set(p["shares"]) == set(profile.CATEGORIES)
    assert sum(p["shares"].values()) == pytest.approx(1.0)
    assert p["op_s"] == pytest.approx(sum(p["categories"].values()))
    assert p["categories"]["matmul"] > 0  # every case multiplies matrices
    assert 0 < p["busy_fraction"] <= 1 and p["busy_s"] > 0
    assert p["top"] and all(kind in profile.CATEGORIES for _, kind, _, _ in p["top"])
    assert [t[2] for t in p["top"]] == sorted((t[2] for t in p["top"]), reverse=True)
    slug = record["implementation"].replace("[", "-").replace("]", "")
    trace = folder / f"{record['case']}_{record['precision']}_{slug}.trace.json.gz"
    assert p["trace"] == trace.name
    again = profile.summarize(str(trace), 1, p["wall_s"])
    assert again["categories"] == pytest.approx(p["categories"])


@pytest.mark.only_backend("torch")  # eager PyTorch steps; the FLOP worker is JAX's anyway
def test_suite_host_size_batch_override_flash_switch_and_per_batch_flop_cache(tmp_path):
    # One run checks --size host beside transformers, --batch, --flash and the FLOP cache
    # (each suite run starts worker processes: tens of seconds of imports).
    suite = _suite()
    from vtx_bench import cases as cases_lib
    from vtx_bench import flops as flops_lib

    # The cache holds the default batch's count (a stand-in value here): a --batch run
    # must neither use nor overwrite it, and keeps its own count beside it.
    cache = tmp_path / "flops.json"
    cache.write_text(json.dumps({"vit_ti16_infer": 12345}))
    meta, records = suite.main([
        "--size", "host", "--backends", "torch", "--references", "transformers",
        "--precisions", "float32", "--cases", "vit_ti16_infer", "--steps", "1", "--warmup",
        "0", "--repeats", "1", "--flops-cache", str(cache), "--batch", "3", "--flash", "off",
        "--out", str(tmp_path)])
    assert meta["size"] == "host"
    assert {r["implementation"] for r in records} == {"keras_vtx[torch]", "transformers"}
    record = next(r for r in records if r["implementation"] == "keras_vtx[torch]")
    reference = next(r for r in records if r["implementation"] == "transformers")
    for r in records:
        assert r["batch"] == 3 and r["step_s"] > 0, r
        assert r["throughput"] == pytest.approx(3 / r["step_s"])
    assert record["parameters"] == reference["parameters"]
    assert record["attention"] == "sdpa"
    case = cases_lib.select(cases_lib.all_cases("host"), names=["vit_ti16_infer"])[0]
    b = cases_lib.resolved_config(case)["backbone"]
    expected = flops_lib.vit_forward_flops(3, b["image_size"], b["patch_size"],
                                           b["num_layers"], b["hidden_dim"], b["mlp_dim"],
                                           cases_lib.resolved_config(case)["num_classes"])
    assert json.loads(cache.read_text()) == {"vit_ti16_infer": 12345,
                                             "vit_ti16_infer@batch3": expected}
    assert meta["forward_flops"] == {"vit_ti16_infer": expected}
    assert record["flops_per_step"] == expected
    assert "--batch 3" in meta["command"]
    with pytest.raises(SystemExit):
        suite.main(["--batch", "0", "--out", str(tmp_path)])


@pytest.mark.only_backend("jax")
def test_traced_flops_count_matmuls_and_convolutions():
    import jax
    import jax.numpy as jnp

    _suite()
    from vtx_bench.flops import count_flops

    a = jax.ShapeDtypeStruct((3, 4), "float32")
    b = jax.ShapeDtypeStruct((4, 5), "float32")
    assert count_flops(lambda x, y: jnp.tanh(x @ y), a, b) == 2 * 3 * 4 * 5
    # NHWC input (2, 8, 8, 3), HWIO kernel 3x3x3x6, SAME: 2 * outputs * 3*3*3.
    image = jax.ShapeDtypeStruct((2, 8, 8, 3), "float32")
    kernel = jax.ShapeDtypeStruct((3, 3, 3, 6), "float32")

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert count_flops(conv, image, kernel) == 2 * (2 * 8 * 8 * 6) * 27
    # A scan counts its body once per step; nested jit calls are followed.
    def scanned(x, y):
        return jax.lax.scan(lambda c, _: (jax.jit(lambda u: u @ y)(c), None), x, None,
                            length=7)[0]

    square = jax.ShapeDtypeStruct((4, 4), "float32")
    assert count_flops(scanned, square, square) == 7 * 2 * 4 * 4 * 4


@pytest.mark.only_backend("jax")
@pytest.mark.parametrize("name", ["vit_ti16", "vit_b16"])
def test_traced_vit_flops_equal_the_closed_form(name):
    _suite()
    from vtx_bench import cases as cases_lib
    from vtx_bench import flops as flops_lib
    from vtx_bench import keras_impl

    case = next(c for c in cases_lib.all_cases("tiny") if c.key == f"{name}_infer")
    config = cases_lib.resolved_config(case)
    x, _ = cases_lib.make_inputs(case, config)
    b = config["backbone"]
    expected = flops_lib.vit_forward_flops(case.batch, b["image_size"], b["patch_size"],
                                           b["num_layers"], b["hidden_dim"], b["mlp_dim"],
                                           config["num_classes"])
    assert keras_impl.forward_flops(case, config, x) == expected


@pytest.mark.backend_independent
def test_peak_table_prefers_the_specific_name():
    _suite()
    from vtx_bench.flops import table_peak

    assert table_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert table_peak("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
    assert table_peak("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(494.7e12)
    assert table_peak("TPU v5 lite", "bfloat16") == 197e12
    assert table_peak("AMD EPYC 7B13", "bfloat16") is None


@pytest.mark.backend_independent
def test_input_pipeline_benchmark_quick_run(tmp_path, capsys):
    benchmark = _load("input_pipeline_benchmark")
    out = tmp_path / "pipeline.json"
    records = benchmark.main(["--quick", "--json", str(out), "--model-rate", "1000",
                              "--clip-rate", "3000"])
    assert [r["pipeline"] for r in records] == [
        "keras_vtx", "keras_vtx, PIL only", "tf.io", "keras_vtx image-text",
        "CLIP tokenizer alone"]
    assert json.loads(out.read_text()) == records
    for r in records:
        assert r["images_per_s"] > 0 and r["cpu_cores"] >= 1 and r["cpu_ms_per_image"] > 0
        rate = 3000 if "image-text" in r["pipeline"] or "CLIP" in r["pipeline"] else 1000
        assert r["model_rate"] == rate
        assert r["cores_to_feed_model"] == pytest.approx(rate * r["cpu_ms_per_image"] / 1000)
    printed = capsys.readouterr().out
    assert "keras_vtx / keras_vtx, PIL only" in printed and "keras_vtx / tf.io" in printed


@pytest.mark.only_backend("torch")  # eager steps: the cheapest; the policies are tf.data's
def test_detr_padding_benchmark_quick_run(tmp_path, capsys):
    benchmark = _load("detr_padding_benchmark")
    out = tmp_path / "padding.json"
    records = benchmark.main(["--quick", "--json", str(out)])
    assert [r["policy"] for r in records] == ["per batch", "buckets"]
    assert json.loads(out.read_text()) == records
    for r in records:
        assert r["steps"] == 4 and r["fit_s"] > 0 and np.isfinite(r["final_loss"]), r
        assert r["distinct_shapes"] == len(r["shapes"]) >= 1
        assert 0 <= r["padded_fraction"] < 1
    # Sides up to 128 px, shorter sides up to 96: landscape and portrait buckets only
    # (orientation groups), while per-batch padding rounds each batch to 32.
    assert {tuple(s) for s in records[1]["shapes"]} <= {(96, 128), (128, 96)}
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in records[0]["shapes"])
    assert "per batch / buckets" in capsys.readouterr().out


def _span(name, ts, dur, pid=1, tid=1, **extra):
    return dict(ph="X", name=name, ts=ts, dur=dur, pid=pid, tid=tid, **extra)


@pytest.mark.backend_independent
def test_profile_summary_self_times_categories_and_device_choice(tmp_path):
    import gzip

    _suite()
    from vtx_bench import profile

    assert [profile.category(n) for n in (
        "sm90_xmma_gemm_bf16bf16_bf16f32", "cudnn_generated_fort_native_sdpa_sm90_flash_fprop",
        "convert_reduce_fusion", "aten::convolution", "loop_add_fusion", "Memcpy DtoD",
        "aten::addmm", "dot.3", "custom-call.2 __cudnn$fmha", "transpose.4")] == [
        "matmul", "attention", "other", "convolution", "other", "copy", "matmul", "matmul",
        "attention", "copy"]
    # A JAX-like trace: host events (ignored: the device has events), and a GPU process
    # whose kernels carry their HLO op; a derived "XLA Modules" span without one is dropped.
    events = [
        dict(ph="M", name="process_name", pid=1, args={"name": "/host:CPU"}),
        dict(ph="M", name="process_name", pid=2, args={"name": "/device:GPU:0"}),
        _span("PjitFunction(step)", 0, 1000),
        _span("jit_step", 0, 100, pid=2, tid=9),
        _span("sm90_xmma_gemm", 0, 30, pid=2, tid=7, args={"hlo_op": "custom-call.1"}),
        _span("loop_fusion", 40, 10, pid=2, tid=7, args={"hlo_op": "fusion.2"}),
        _span("flash_fprop", 45, 20, pid=2, tid=8, args={"hlo_op": "custom-call.3"}),
    ]
    path = tmp_path / "jax.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = profile.summarize(str(path), steps=1, wall_s=100e-6)
    assert s["source"] == "device" and s["events"] == 3
    # Named stream lines win over derived lines that repeat the ops ("XLA Ops").
    events += [dict(ph="M", name="thread_name", pid=2, tid=7, args={"name": "Stream #14"}),
               dict(ph="M", name="thread_name", pid=2, tid=8, args={"name": "Stream #15"}),
               dict(ph="M", name="thread_name", pid=2, tid=5, args={"name": "XLA Ops"}),
               _span("custom-call.1", 0, 30, pid=2, tid=5, args={"hlo_op": "custom-call.1"})]
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert profile.summarize(str(path), steps=1, wall_s=100e-6) == s
    assert s["categories"] == pytest.approx(
        {"matmul": 30e-6, "attention": 20e-6, "convolution": 0.0, "copy": 0.0,
         "other": 10e-6})
    assert s["busy_s"] == pytest.approx(55e-6)  # [0, 30] and [40, 65]
    assert s["busy_fraction"] == pytest.approx(0.55)
    assert s["top"][0][:2] == ["sm90_xmma_gemm", "matmul"]
    # A PyTorch CPU trace: nested ops count their self time only; two steps.
    events = [
        _span("aten::linear", 0, 100, cat="cpu_op"),
        _span("aten::addmm", 10, 60, cat="cpu_op"),
        _span("aten::copy_", 20, 5, cat="cpu_op"),
        _span("aten::gelu", 100, 40, cat="cpu_op"),
        _span("AddmmBackward0", 150, 50, tid=2, cat="cpu_op"),
        _span("aten::mm", 160, 30, tid=2, cat="cpu_op"),
        dict(ph="i", name="marker", ts=5, pid=1, tid=1),
    ]
    path = tmp_path / "torch.json"
    path.write_text(json.dumps({"traceEvents": events}))
    s = profile.summarize(str(path), steps=2)
    assert s["source"] == "host" and s["wall_s"] is None and s["busy_fraction"] is None
    # linear 100 - 60 (addmm) = 40, addmm 60 - 5 = 55, backward 50 - 30 = 20, mm 30.
    assert s["categories"] == pytest.approx(
        {"matmul": (40 + 55 + 20 + 30) / 2e6, "attention": 0.0, "convolution": 0.0,
         "copy": 5 / 2e6, "other": 40 / 2e6})
    assert s["busy_s"] == pytest.approx(190 / 2e6)  # [0, 140] and [150, 200]
    # PyTorch CUDA kernels are the device events when present.
    events.append(_span("ampere_bf16_s16816gemm", 300, 8, pid=3, cat="kernel"))
    path.write_text(json.dumps(events))  # a bare event list is read too
    s = profile.summarize(str(path), steps=1)
    assert s["source"] == "device" and s["categories"]["matmul"] == pytest.approx(8e-6)


@pytest.mark.backend_independent
def test_host_size_keeps_the_published_depths_heads_and_lengths():
    # "host" cases measure the host's time per step: what it dispatches (layers, heads,
    # queries, text length) must be the published model's; only widths and inputs shrink.
    _suite()
    from vtx_bench import cases as cases_lib

    full = {c.key: cases_lib.resolved_config(c) for c in cases_lib.all_cases("full")}
    host = cases_lib.all_cases("host")
    assert [c.key for c in host] == list(full)
    kept = {"vit": {"backbone": ("num_layers", "num_heads", "patch_size")},
            "clip": {"image_encoder": ("num_layers", "num_heads"),
                     "text_encoder": ("num_layers", "num_heads", "context_length")},
            "igpt": {"backbone": ("num_layers", "num_heads")},
            "detr": {None: ("num_queries", "num_heads", "num_encoder_layers",
                            "num_decoder_layers", "num_classes")}}
    for case in host:
        assert case.size == "host" and case.batch == 2
        config = cases_lib.resolved_config(case)
        for part, keys in kept[case.family].items():
            got = config if part is None else config[part]
            want = full[case.key] if part is None else full[case.key][part]
            assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, (case.key, part)
        if case.family == "detr":  # ResNet-50's bottleneck counts, tiny widths
            assert config["backbone"]["blocks_per_stage"] == [3, 4, 6, 3]
    with pytest.raises(ValueError, match="`size` must be one of"):
        cases_lib.all_cases("huge")


@pytest.mark.only_backend("torch")  # the script runs its own worker process per backend
def test_strided_shortcut_benchmark_quick_run(tmp_path, capsys):
    benchmark = _load("strided_shortcut_benchmark")
    out = tmp_path / "shortcut.json"
    records = benchmark.main(["--quick", "--backends", "torch", "--json", str(out)])
    assert len(records) == len(benchmark.SHORTCUTS), records
    assert json.loads(out.read_text()) == records
    for record in records:
        assert "error" not in record, record
        assert record["max_abs_difference"] < 1e-4, record  # the two forms are the same function
        assert record["strided_s"] > 0 and record["subsampled_s"] > 0
    assert "strided/subsampled" in capsys.readouterr().out


@pytest.mark.only_backend("torch")  # a worker process per configuration, eager PyTorch steps
def test_detr_convergence_benchmark_quick_run(tmp_path, capsys):
    benchmark = _load("detr_convergence")
    plot = tmp_path / "ap.png"
    records = benchmark.main([
        "--configs", "detr,dn_batch_norm", "--preset", "detr_tiny_test", "--steps", "2",
        "--every", "1", "--images", "20", "--batch-size", "4", "--max-boxes", "4",
        "--out", str(tmp_path / "runs"), "--plot", str(plot),
    ])
    assert [r["name"] for r in records] == ["detr", "dn_batch_norm"]
    for record in records:
        assert [p["step"] for p in record["points"]] == [1, 2]
        assert all(0.0 <= p["AP"] <= 1.0 and p["train_s"] > 0 for p in record["points"])
    # Each configuration trained what it names: denoising logs its own loss.
    assert "denoising_loss" not in records[0]["points"][-1]["loss"]
    assert "denoising_loss" in records[1]["points"][-1]["loss"]
    assert records[1]["overrides"]["norm"] == "batch_norm"
    assert plot.stat().st_size > 0
    assert "+ denoising + batch norm (preset)" in capsys.readouterr().out
    again = benchmark.main(["--plot-only", str(tmp_path / "runs" / "*.json")])
    assert sorted(r["name"] for r in again) == ["detr", "dn_batch_norm"]


@pytest.mark.only_backend("jax")
def test_optimizer_memory_counts_equal_the_built_optimizers():
    from keras_vtx.models import ScalingViTAdafactor, ViTBackbone, ViTClassifier
    from keras_vtx.models.vit.vit_adafactor import optimizer_state_bytes
    from tests.test_case import TINY_VIT

    benchmark = _load("optimizer_memory")
    model = ViTClassifier(ViTBackbone(**{**TINY_VIT, "hidden_dim": 40, "mlp_dim": 80}),
                          num_classes=3)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    for name, optimizer in (("adamw", keras.optimizers.AdamW()),
                            ("adafactor", ScalingViTAdafactor())):
        optimizer.build(model.trainable_variables)
        assert benchmark.state_bytes(shapes, name) == optimizer_state_bytes(optimizer)
    rows = benchmark.main(["--presets", "vit_pico_patch4_32"])
    assert rows[0]["parameters"] == ViTClassifier.from_preset("vit_pico_patch4_32").count_params()
    assert 0.25 < rows[0]["ratio"] < 0.5


# The script starts its own processes (on PyTorch: eager steps are the cheapest), so it runs
# once, in the JAX session, CI's shortest.
@pytest.mark.only_backend("jax")
def test_gpu_session_script_quick_run(tmp_path):
    """benchmarks/gpu_session.sh, the one device call of the GPU checks, at smoke sizes."""
    import re
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), BACKENDS="torch", PYTHON=sys.executable, TOTAL_S="500")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_session.sh"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=900)
    log = (out / "session.log").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Each step got a share of the time left, ran to the end, and left its results:
    # 30% then 50% of the time left (TOTAL_S less the start), and 70% of that to the suite.
    matcher_s, detr_s, budget = (int(x) for x in re.search(
        r"== matcher \((\d+)s\).*== detr \((\d+)s\).*--time-budget (\d+)", log, re.S).groups())
    assert 140 <= matcher_s <= 150 and 150 <= detr_s <= 250 and budget == detr_s * 7 // 10, log
    assert "== matcher: exit 0" in log and "== detr: exit 0" in log, log
    with tarfile.open(out / "results.tar.gz") as tar:
        matcher = json.load(tar.extractfile("./matcher.json"))
        detr = json.load(tar.extractfile("./detr/benchmarks.json"))
        assert {"./matcher.log", "./detr.log", "./detr/benchmarks.md"} <= set(tar.getnames())
    assert {r["case"] for r in matcher} == {"10x6", "detr step 2x6"}
    assert all(r["exact"] for r in matcher), matcher
    (record,) = detr["results"]
    assert record["case"] == "detr_r50_train" and record["other_loss_fraction"] > 0, record
