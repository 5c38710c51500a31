"""SavedModel export: two signatures, dynamic batch, outputs equal to the network, atomic
publication, pruning, loading."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from models import export
from models.export import export_version, list_versions, load_version, prune_versions, remove_stale_temporaries
from models.networks import MuZeroNetwork
from tests.models.tolerances import assert_decoded_matches_logits

BOARD = GameSpec(name="board6x7", observation_shape=(6, 7, 2), observation_dtype="uint8", num_actions=7,
                 num_players=2, discount=1.0, max_moves=42)
RESNET = MuZeroSettings.of(architecture="resnet", hidden_size=8, fc_layers=(16,), res_blocks=1, support_size=5)
FC = CartPole.settings.replace(hidden_size=16, fc_layers=(16,))


def make_network(spec, settings, seed):
    network = MuZeroNetwork(spec, settings, seed=seed)
    rng = np.random.default_rng(seed)
    network.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(np.float32) for w in network.get_weights()])
    return network


@pytest.fixture(scope="module", params=["fc", "resnet"])
def exported(request, tmp_path_factory):
    spec, settings = (CartPole.spec, FC) if request.param == "fc" else (BOARD, RESNET)
    network = make_network(spec, settings, seed=1)
    base = tmp_path_factory.mktemp(f"export-{request.param}")
    path = export_version(network, base, 7)
    return network, base, path


def test_exactly_two_signatures_with_names_dtypes_and_dynamic_batch(exported):
    network, base, path = exported
    assert path == base / "7" and list_versions(base) == [7]
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == ["initial_inference", "recurrent_inference"]
    initial = loaded.signatures["initial_inference"]
    recurrent = loaded.signatures["recurrent_inference"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in initial.structured_input_signature[1].items()} == {
        "observation": (tf.float32, [None, *network.observation_shape])}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in recurrent.structured_input_signature[1].items()} == {
        "hidden_state": (tf.float32, [None, *network.hidden_shape]), "action": (tf.int32, [None])}
    want_outputs = {"hidden_state": (tf.float32, [None, *network.hidden_shape]), "value": (tf.float32, [None]),
                    "reward": (tf.float32, [None]), "policy_logits": (tf.float32, [None, network.num_actions])}
    for signature in (initial, recurrent):
        assert {k: (v.dtype, v.shape.as_list()) for k, v in signature.structured_outputs.items()} == want_outputs
    # The MetaGraph (what TensorFlow Serving reads) has the same two serving signatures.
    defs = load_version(base).signature_defs()
    assert sorted(defs) == ["initial_inference", "recurrent_inference"]
    assert all(d.method_name == "tensorflow/serving/predict" for d in defs.values())


def assert_outputs_match(got: dict, want, support_size: int, rtol: float, atol: float) -> None:
    """The exported graph's outputs against the eager network's: what the graph computes before
    decoding (hidden state, policy logits) within rtol/atol; value and reward as expected
    support values, with the tolerance that rtol/atol on their logits implies (see
    tests/models/tolerances.py), since h^-1 amplifies rounding differences between kernels."""
    for name in ("hidden_state", "policy_logits"):
        np.testing.assert_allclose(got[name], getattr(want, name).numpy(), rtol=rtol, atol=atol, err_msg=name)
    for name, logits in (("value", want.value_logits), ("reward", want.reward_logits)):
        assert_decoded_matches_logits(got[name], logits.numpy(), support_size, logit_atol=atol,
                                      logit_rtol=rtol, name=name)


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_exported_outputs_equal_the_network(exported, batch):
    network, base, _ = exported
    model = load_version(base)
    assert model.version == 7
    rng = np.random.default_rng(batch)
    observation = rng.uniform(-1, 1, (batch, *network.observation_shape)).astype(np.float32)
    got = model.initial_inference(observation)
    want = network.initial_inference(observation)
    assert sorted(got) == sorted(export.OUTPUTS)
    assert_outputs_match(got, want, network.support_size, rtol=1e-5, atol=1e-5)
    assert np.abs(got["value"]).max() > 0  # random weights: a real comparison, not zeros
    np.testing.assert_array_equal(got["reward"], 0.0)
    action = rng.integers(0, network.num_actions, batch).astype(np.int32)
    got = model.recurrent_inference(got["hidden_state"], action)
    want = network.recurrent_inference(want.hidden_state, action)
    assert_outputs_match(got, want, network.support_size, rtol=1e-4, atol=1e-5)
    assert np.abs(got["reward"]).max() > 0


def test_output_comparison_catches_a_wrong_value(exported):
    """The derived tolerance is tight enough to see a value off by 1% of its size."""
    network, base, _ = exported
    observation = np.random.default_rng(9).uniform(-1, 1, (8, *network.observation_shape)).astype(np.float32)
    got = load_version(base).initial_inference(observation)
    want = network.initial_inference(observation)
    wrong = dict(got, value=got["value"] * np.float32(1.01))
    with pytest.raises(AssertionError, match="derived tolerance"):
        assert_outputs_match(wrong, want, network.support_size, rtol=1e-5, atol=1e-5)


def test_a_non_finite_row_leaves_the_other_rows_alone(exported):
    """The network server answers NaN and inf inputs (as TensorFlow Serving does) and merges
    requests into one batch: that is safe because no row of the exported graph depends on
    another (batch norm uses its moving statistics, the hidden state is normalized per example)."""
    network, base, _ = exported
    model = load_version(base)
    rng = np.random.default_rng(11)
    observation = rng.uniform(-1, 1, (4, *network.observation_shape)).astype(np.float32)
    alone = model.initial_inference(observation[1:])
    poisoned = observation.copy()
    poisoned[0].flat[0] = np.nan
    poisoned[0].flat[1] = np.inf
    merged = model.initial_inference(poisoned)  # row 0 may or may not come back NaN (ReLU may drop it)
    for name in export.OUTPUTS:
        assert np.isfinite(merged[name][1:]).all(), name
        np.testing.assert_allclose(merged[name][1:], alone[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_exported_graph_rejects_actions_out_of_range(exported):
    network, base, _ = exported
    model = load_version(base)
    hidden = np.zeros((2, *network.hidden_shape), np.float32)
    for bad in ([0, network.num_actions], [-1, 0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="action must be in"):
            model.recurrent_inference(hidden, np.array(bad, np.int32))


def test_existing_version_is_never_replaced(exported):
    network, base, _ = exported
    before = sorted(os.listdir(base / "7"))
    with pytest.raises(FileExistsError, match="version 7"):
        export_version(network, base, 7)
    assert sorted(os.listdir(base / "7")) == before
    assert os.listdir(base) == ["7"]  # no temporary left behind


def test_bad_versions_are_rejected(tmp_path):
    network = MuZeroNetwork(CartPole.spec, FC, seed=0)
    for bad in (-1, "3", 2.0, True):
        with pytest.raises(ValueError, match="version"):
            export_version(network, tmp_path, bad)


def test_export_in_progress_is_never_a_version(tmp_path, monkeypatch):
    """While the SavedModel is being written, its directory is not a version name."""
    network = MuZeroNetwork(CartPole.spec, FC, seed=0)
    export_version(network, tmp_path, 1)
    seen = {}
    real_save = tf.saved_model.save

    def watching_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        seen["dirs"] = sorted(os.listdir(tmp_path))
        seen["versions"] = list_versions(tmp_path)

    monkeypatch.setattr(tf.saved_model, "save", watching_save)
    export_version(network, tmp_path, 2)
    assert seen["versions"] == [1]
    temporaries = [d for d in seen["dirs"] if d != "1"]
    assert len(temporaries) == 1 and temporaries[0].startswith(".tmp-2-")
    assert not export.is_version_name(temporaries[0])
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


@pytest.mark.parametrize("crash_in", ["save", "rename"])
def test_crash_mid_export_leaves_no_version(tmp_path, monkeypatch, crash_in):
    network = MuZeroNetwork(CartPole.spec, FC, seed=0)
    real_save = tf.saved_model.save

    def crashing_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        os.remove(os.path.join(path, "saved_model.pb"))  # half written
        raise OSError("disk full")

    def crashing_rename(src, dst):
        raise OSError("crash before the rename")

    if crash_in == "save":
        monkeypatch.setattr(tf.saved_model, "save", crashing_save)
    else:
        monkeypatch.setattr(export.os, "rename", crashing_rename)
    with pytest.raises(OSError):
        export_version(network, tmp_path, 3)
    assert list_versions(tmp_path) == []
    assert os.listdir(tmp_path) == []  # the temporary was cleaned up


def test_leftovers_of_a_killed_export_are_ignored_and_removable(tmp_path):
    network = MuZeroNetwork(CartPole.spec, FC, seed=0)
    (tmp_path / ".tmp-5-deadbeef" / "variables").mkdir(parents=True)  # as kill -9 would leave it
    (tmp_path / "notes").mkdir()
    export_version(network, tmp_path, 4)
    assert list_versions(tmp_path) == [4]
    assert load_version(tmp_path).version == 4
    assert remove_stale_temporaries(tmp_path) == [".tmp-5-deadbeef"]
    assert sorted(os.listdir(tmp_path)) == ["4", "notes"]


def test_prune_keeps_the_newest(tmp_path):
    network = MuZeroNetwork(CartPole.spec, FC, seed=0)
    export_version(network, tmp_path, 10)
    for version in (3, 20, 100, 9):  # copies are enough to test pruning
        shutil.copytree(tmp_path / "10", tmp_path / str(version))
    assert list_versions(tmp_path) == [3, 9, 10, 20, 100]
    assert prune_versions(tmp_path, keep=3) == [3, 9]
    assert list_versions(tmp_path) == [10, 20, 100]
    assert prune_versions(tmp_path, keep=3) == []
    export_version(network, tmp_path, 101, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["100", "101"]
    with pytest.raises(ValueError, match="keep"):
        prune_versions(tmp_path, keep=0)


def test_load_version_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no versions"):
        load_version(tmp_path)
    with pytest.raises(FileNotFoundError, match="version 3"):
        load_version(tmp_path, 3)


def test_fast_calls_equal_the_keyword_signature_calls(exported):
    """LoadedModel.run calls the signatures' flat functions; they must agree with the keyword call."""
    network, base, _ = exported
    model = load_version(base)
    rng = np.random.default_rng(5)
    observation = rng.uniform(-1, 1, (5, *network.observation_shape)).astype(np.float32)
    inputs = {"initial_inference": {"observation": observation},
              "recurrent_inference": {"hidden_state": model.initial_inference(observation)["hidden_state"],
                                      "action": rng.integers(0, network.num_actions, 5).astype(np.int32)}}
    for name, signature_inputs in inputs.items():
        fast = model.run(name, signature_inputs)
        slow = {k: v.numpy() for k, v in model.signatures[name](**signature_inputs).items()}
        assert sorted(fast) == sorted(slow)
        for key in slow:
            np.testing.assert_array_equal(fast[key], slow[key], err_msg=f"{name}/{key}")
