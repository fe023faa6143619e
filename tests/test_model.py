"""The HDML train step: optimiser variable sets, replicas and checkpoints."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf.backbones import build_backbone
from hdml_tf.model import HDMLConfig, HDMLModel
from hdml_tf.runs import make_checkpoint

IMAGE_SIZE = 64


def _batch(loss, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    if loss == "triplet":
        t = batch_size // 3
        labels = np.concatenate([np.arange(t) % 4, np.arange(t) % 4, (np.arange(t) + 1) % 4])
    else:
        n = batch_size // 2
        labels = np.concatenate([np.arange(n), np.arange(n)])
    return images, labels.astype(np.int32)


def _model(**overrides):
    config = HDMLConfig(num_classes=6, embedding_size=16, block_size=4, **overrides)
    keras.utils.set_random_seed(0)
    return HDMLModel(build_backbone("googlenet"), config)


def _use_sgd(model, learning_rate=0.1):
    """Swap the Adam optimisers for SGD, whose step shows the gradient's scale (Adam's does not)."""
    for name, variables in [("metric_optimizer", model.metric_variables),
                            ("generator_optimizer", model.generator.trainable_variables),
                            ("classifier_optimizer", model.classifier.trainable_variables)]:
        optimizer = keras.optimizers.SGD(learning_rate)
        optimizer.build(variables)
        setattr(model, name, optimizer)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


@pytest.mark.parametrize(
    "active, lrs",
    [
        ("metric", dict(lr=1e-3, lr_gen=0.0, lr_cls=0.0)),
        ("generator", dict(lr=0.0, lr_gen=1e-3, lr_cls=0.0)),
        ("classifier", dict(lr=0.0, lr_gen=0.0, lr_cls=1e-3)),
    ],
)
def test_each_optimizer_changes_only_its_variables(active, lrs):
    model = _model(lr_decay_steps=(), **lrs)
    groups = {
        "metric": model.metric_variables,
        "generator": model.generator.trainable_variables,
        "classifier": model.classifier.trainable_variables,
    }
    before = {name: _values(variables) for name, variables in groups.items()}
    model.train_step(_batch("npair", 8))
    for name, variables in groups.items():
        changed = _changed(before[name], variables)
        if name == active:
            assert all(changed), f"{name}: some variables were not updated"
        else:
            assert not any(changed), f"{name} changed although only {active} has a learning rate"


def test_variable_sets_are_disjoint():
    model = _model()
    sets = [model.metric_variables, model.generator.trainable_variables, model.classifier.trainable_variables]
    ids = [id(v) for variables in sets for v in variables]
    assert len(ids) == len(set(ids))
    assert len(ids) == len(model.trainable_variables)


@pytest.mark.parametrize("loss", ["npair", "triplet", "contrastive"])
def test_two_replica_step_equals_single_device_reference(loss):
    batch_size = 12 if loss == "triplet" else 8
    images, labels = _batch(loss, batch_size)
    # The sampler gives each replica a contiguous slice holding whole groups.
    if loss == "triplet":
        slices = [np.r_[0:2, 4:6, 8:10], np.r_[2:4, 6:8, 10:12]]
    else:
        slices = [np.r_[0:2, 4:6], np.r_[2:4, 6:8]]
    order = np.concatenate(slices)
    per_replica = [(images[s], labels[s]) for s in slices]

    reference = _model(loss=loss)
    _use_sgd(reference)
    initial_weights = reference.get_weights()
    updates = []
    step_losses = []
    for replica_images, replica_labels in per_replica:
        with tf.GradientTape(persistent=True) as tape:
            values = reference.compute_hdml_losses(replica_images, replica_labels, training=True)
        step_losses.append(values)
        updates.append([
            tape.gradient(values["j_metric"], reference.metric_variables),
            tape.gradient(values["j_gen"], reference.generator.trainable_variables),
            tape.gradient(values["j_cls"], reference.classifier.trainable_variables),
        ])
    optimizers = [reference.metric_optimizer, reference.generator_optimizer, reference.classifier_optimizer]
    variable_sets = [reference.metric_variables, reference.generator.trainable_variables,
                     reference.classifier.trainable_variables]
    for index, (optimizer, variables) in enumerate(zip(optimizers, variable_sets)):
        mean_gradients = [(a + b) / 2 for a, b in zip(updates[0][index], updates[1][index])]
        optimizer.apply_gradients(zip(mean_gradients, variables))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        distributed = _model(loss=loss)
        distributed.set_weights(initial_weights)
        _use_sgd(distributed)
        distributed.compile()
    dataset = tf.data.Dataset.from_tensors((images[order], labels[order]))
    logs = distributed.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history

    initial = dict(zip([v.path for v in reference.weights], initial_weights))
    for want, got in zip(reference.trainable_variables, distributed.trainable_variables):
        want_step = want.numpy() - initial[want.path]
        got_step = got.numpy() - initial[want.path]
        assert np.abs(want_step).max() > 0, want.path
        scale = np.abs(want_step).max()
        np.testing.assert_allclose(got_step, want_step, rtol=1e-3, atol=1e-3 * scale, err_msg=want.path)
    mean_j_m = np.mean([float(values["j_m"]) for values in step_losses])
    np.testing.assert_allclose(logs["j_m"][0], mean_j_m, rtol=1e-4)


def test_checkpoint_round_trip_restores_schedule_state(tmp_path):
    model = _model()
    model.compile()
    dataset = tf.data.Dataset.from_tensors(_batch("npair", 8)).repeat()
    model.fit(dataset, epochs=1, steps_per_epoch=6, verbose=0)
    # block_size=4: after 6 steps J_avg holds the first block's mean and a block is half full.
    assert float(model.j_avg.value.numpy()) != 1e6
    assert int(model.j_avg.block_steps.numpy()) == 2
    path = make_checkpoint(model).save(str(tmp_path / "ckpt"))

    restored = _model()
    make_checkpoint(restored).restore(path).assert_existing_objects_matched()
    for want, got in zip(model.schedule_variables, restored.schedule_variables):
        assert "j_avg" in got.path or "j_gen_avg" in got.path
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert int(restored.step_counter.numpy()) == 6
    assert int(restored.metric_optimizer.iterations.numpy()) == 6
    for want, got in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_baseline_has_no_generator():
    model = _model(hdml=False)
    assert not hasattr(model, "generator")
    logs = model.train_step(_batch("npair", 8))
    assert set(logs) >= {"j_metric", "j_m", "j_avg"}
    np.testing.assert_allclose(float(logs["j_metric"]), float(logs["j_m"]))


def test_non_finite_loss_skips_update():
    model = _model()
    kernel = model.head.get_layer("embedding_dense").kernel
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0]], [np.nan]))
    before = _values(model.trainable_variables)
    logs = model.train_step(_batch("npair", 8))
    assert float(logs["finite"]) == 0.0
    for want, got in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want)
    assert int(model.step_counter.numpy()) == 1


def test_config_rejects_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        dataclasses.replace(HDMLConfig(num_classes=3), loss="arcface")
