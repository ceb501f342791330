"""TensorFlow's CPU kernels on every convolution and pooling configuration of the presets.

TensorFlow 2.21's oneDNN filter gradient of strided 1x1 convolutions corrupts memory on AVX-512
CPUs (keras_vtx/ops/subsample.py, docs/known_issues.md). tests/kernel_scan.py runs each
configuration in subprocesses, so a kernel that crashes fails a test here, naming the layer,
instead of killing the TensorFlow session. The subprocesses always use the TensorFlow backend;
these tests run from the PyTorch session (CI's shortest).
"""

import pytest

from tests import kernel_scan


@pytest.fixture(scope="module")
def cases():
    return kernel_scan.discover_cases()


@pytest.mark.only_backend("torch")
def test_discovery_finds_every_family_and_no_strided_pointwise_convolution(cases):
    convs = [c for c in cases if "filters" in c["layer"]["config"]]
    kinds = {(kernel_scan.layer_class(c), tuple(c["layer"]["config"]["kernel_size"]))
             for c in convs}
    # DETR's ResNet (7x7 stem, 3x3, 1x1), the BiT stem of the hybrid ViT, patch embeddings.
    for expected in [("Conv2D", (7, 7)), ("Conv2D", (3, 3)), ("Conv2D", (1, 1)),
                     ("StandardizedConv2D", (7, 7)), ("StandardizedConv2D", (1, 1)),
                     ("Conv2D", (16, 16)), ("Conv2D", (14, 14)), ("Conv2D", (32, 32))]:
        assert expected in kinds, expected
    assert any(kernel_scan.layer_class(c) == "MaxPooling2D" for c in cases)
    assert any(tuple(c["layer"]["config"]["dilation_rate"]) == (2, 2) for c in convs)
    # The shapes of the TensorFlow bug: a 1x1 kernel with a stride. keras_vtx subsamples
    # instead (keras_vtx.ops.subsample); this fails on every CPU if a layer brings one back.
    strided_pointwise = [
        kernel_scan.describe(c) + f" in {c['used_by']}" for c in convs
        if tuple(c["layer"]["config"]["kernel_size"]) == (1, 1)
        and tuple(c["layer"]["config"]["strides"]) != (1, 1)
    ]
    assert not strided_pointwise, strided_pointwise


@pytest.mark.slow
@pytest.mark.only_backend("torch")
def test_tensorflow_kernels_run_every_configuration(cases):
    # oneDNN on, whatever the caller's environment says (it is TensorFlow's default on x86).
    results = kernel_scan.run_scan(cases, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    failed = [r for r in results if r["status"] != "ok"]
    assert not failed, "\n" + kernel_scan.format_results(cases, results)
    modes, precisions = len(kernel_scan.MODES), len(kernel_scan.PRECISIONS)
    assert len(results) == len(cases) * modes * precisions


@pytest.mark.only_backend("torch")
def test_a_crashing_kernel_is_reported_and_the_scan_goes_on(cases):
    crash = {**cases[0], "simulate": "crash"}
    results = kernel_scan.run_scan([crash, cases[0], crash], precisions=("float32",),
                                   modes=("eager",))
    # Each crash ends a process; the next one starts after the run that crashed.
    assert [(r["case"], r["status"]) for r in results] == [(0, "crash"), (1, "ok"), (2, "crash")]
    assert "SIGABRT" in results[0]["detail"]
    assert "crash" in kernel_scan.format_results([crash, cases[0], crash], results)
