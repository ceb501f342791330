"""Every model of the registry (tests/models/model_cases.py) through the shared harness."""

import pytest

from tests.models.model_cases import CASES
from tests.test_case import (
    run_build_test,
    run_config_test,
    run_fit_test,
    run_gradient_test,
    run_precision_test,
    run_preset_test,
    run_saving_test,
)

IDS = [case.name for case in CASES]
TASKS = [case for case in CASES if case.is_task]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_layer_is_built_at_construction(case):
    run_build_test(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_round_trip(case):
    run_config_test(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keras_save_and_load(case, tmp_path):
    run_saving_test(case, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_preset_save_and_reload_with_an_override(case, tmp_path):
    run_preset_test(case, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_reach_every_trainable_variable(case):
    run_gradient_test(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mixed_precision(case):
    run_precision_test(case)


@pytest.mark.parametrize("case", TASKS, ids=[case.name for case in TASKS])
def test_first_fit_traces_the_step_once(case):
    run_fit_test(case)


def test_every_model_class_is_in_the_registry():
    # A new model class gets the harness by being listed in model_cases.CASES.
    import keras_vtx.models as models
    from keras_vtx.models.backbone import Backbone
    from keras_vtx.models.task import TaskPresets

    classes = {getattr(models, name) for name in models.__all__}
    model_classes = {c for c in classes if isinstance(c, type)
                     and issubclass(c, (Backbone, TaskPresets)) and c not in (Backbone,)}
    model_classes.discard(models.Task)
    assert model_classes == {case.cls for case in CASES}
