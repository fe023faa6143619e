"""The HDML model: backbone, embedding head, generator and classifier with a custom train_step.

One training step runs one forward pass and steps three Adam optimisers on disjoint
variables (the losses are defined in `hdml_tf.losses`, the synthesis in `hdml_tf.hardness`):

| loss     | updates                          |
|----------|----------------------------------|
| J_metric | backbone and embedding head      |
| J_gen    | generator                        |
| J_cls    | softmax classifier               |

    J_metric = w * J_m + (1 - w) * J_syn,  w = exp(-beta / J_gen_avg)
    J_gen    = J_recon + J_soft
    J_recon  = (1 - gen_lambda) * sum over rows and dims of (G(z) - y)^2
    J_soft   = softmax_factor * gen_lambda * (mean CE(cls(G(z^-)), label of z-)
                                             + mean CE(cls(G(z_anchor)), anchor label))
    J_cls    = mean CE(cls(y), label)

J_m includes the weight decay of the backbone and head kernels and biases. J_avg is the
block average of w * J_m (the weighted value, as in the authors' code) and J_gen_avg the
block average of J_gen. With `hdml=False` the step trains J_m alone: the baseline.

Batch layouts (per replica): N-pair and contrastive take [N anchors; N positives] of N
distinct classes; triplet takes [T anchors; T positives; T negatives].
"""

import contextlib
import dataclasses

import keras
import tensorflow as tf

from hdml_tf import hardness, heads, losses

LOSSES = ("npair", "triplet", "contrastive")
# Number of images per group in the batch layout of each loss.
GROUP_SIZES = {"npair": 2, "contrastive": 2, "triplet": 3}
NAN_POLICIES = ("stop", "skip_step")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class HDMLConfig:
    """Hyper-parameters of the HDML objective and its optimisers.

    Defaults are the authors' Cars196 N-pair settings; `hdml_tf.train` sets them per dataset.
    """

    num_classes: int
    loss: str = "npair"
    hdml: bool = True
    embedding_size: int = 128
    alpha: float = 90.0
    beta: float = 1e4
    gen_lambda: float = 0.5
    softmax_factor: float = 1e4
    l2_reg: float = 3e-3
    weight_decay: float = 5e-3
    margin: float = 1.0
    block_size: int = 64
    lr: float = 7e-5
    lr_gen: float = 1e-2
    lr_cls: float = 1e-3
    lr_decay_steps: tuple = (5632, 6848)
    lr_decay_factor: float = 0.5
    nan_policy: str = "stop"
    precision: str = "float32"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, received loss={self.loss!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, received {self.nan_policy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, received {self.precision!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, received {self.num_classes}")


def _adam(learning_rate, name, loss_scaling=False):
    # epsilon 1e-8 matches the TF1 Adam the authors trained with (Keras defaults to 1e-7).
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, epsilon=1e-8, name=name)
    if loss_scaling:
        # Dynamic loss scaling keeps float16 gradients from underflowing; steps whose
        # scaled gradients overflow are skipped and the scale is halved.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"{name}_loss_scale")
    return optimizer


def _metric_learning_rate(config):
    if not config.lr_decay_steps:
        return config.lr
    values = [config.lr * config.lr_decay_factor**i for i in range(len(config.lr_decay_steps) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(list(config.lr_decay_steps), values)


@contextlib.contextmanager
def precision_policy(precision):
    """Build the layers created inside under the Keras dtype policy `precision`."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class HDMLModel(keras.Model):
    """GoogLeNet (or another backbone) with the HDML heads and training step.

    Build it inside the distribution strategy's scope: the constructor creates every
    variable, including the three optimisers' slots, so that nothing is created during
    the first distributed step. Build the backbone under the same dtype policy as
    `config.precision` (`build_with_precision` does both). Losses, distances and the
    schedule state are always float32.

    Calling the model returns the raw embedding z (not normalised); `embed` normalises it.
    """

    def __init__(self, backbone, config, **kwargs):
        super().__init__(name=kwargs.pop("name", "hdml"), **kwargs)
        self.config = config
        self.backbone = backbone
        feature_size = backbone.output.shape[-1]
        with precision_policy(config.precision):
            self.head = heads.build_embedding_head(config.embedding_size, feature_size)
            if config.hdml:
                self.generator = heads.build_generator(config.embedding_size, feature_size)
                self.classifier = heads.build_classifier(config.num_classes, feature_size)

        self.j_avg = hardness.BlockAverage("j_avg", config.block_size)
        self.j_gen_avg = hardness.BlockAverage("j_gen_avg", config.block_size)
        self.step_counter = self.add_weight(
            name="train_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

        loss_scaling = config.precision == "mixed_float16"
        self.metric_optimizer = _adam(_metric_learning_rate(config), "metric_adam", loss_scaling)
        self.metric_optimizer.build(self.metric_variables)
        if config.hdml:
            self.generator_optimizer = _adam(config.lr_gen, "generator_adam", loss_scaling)
            self.generator_optimizer.build(self.generator.trainable_variables)
            self.classifier_optimizer = _adam(config.lr_cls, "classifier_adam", loss_scaling)
            self.classifier_optimizer.build(self.classifier.trainable_variables)
        self.built = True

    def compile(self, **kwargs):
        """Compile with the metric optimiser as Keras' `optimizer` (Keras would add an RMSprop)."""
        kwargs.setdefault("optimizer", self.metric_optimizer)
        super().compile(**kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # NOTE: overrides a private Keras 3.15 hook. Every variable, the optimisers' slots
        # included, exists after __init__, so Keras' symbolic build has nothing to build.
        # Skipping it also avoids reading a batch, which fails under
        # MultiWorkerMirroredStrategy because Keras all-reduces that batch eagerly.
        del iterator, data_batch

    @property
    def metric_variables(self):
        """Variables trained by J_metric: the backbone and the embedding head."""
        return self.backbone.trainable_variables + self.head.trainable_variables

    @property
    def decay_variables(self):
        """Kernels and biases of the backbone and head, which weight decay applies to (not BN)."""
        weighted_layers = (
            keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Dense
        )
        variables = []
        for model in (self.backbone, self.head):
            for layer in model.layers:
                if isinstance(layer, weighted_layers):
                    variables.extend(layer.trainable_variables)
        return variables

    @property
    def schedule_variables(self):
        """The HDML schedule state: J_avg, J_gen_avg and their block accumulators."""
        return self.j_avg.variables + self.j_gen_avg.variables

    @property
    def optimizers(self):
        if self.config.hdml:
            return [self.metric_optimizer, self.generator_optimizer, self.classifier_optimizer]
        return [self.metric_optimizer]

    def call(self, images, training=False):
        return self.head(self.backbone(images, training=training), training=training)

    def embed(self, images):
        """Return L2-normalised float32 embeddings of RGB images on the 0-255 scale."""
        return tf.math.l2_normalize(tf.cast(self(images, training=False), tf.float32), axis=-1)

    def build_embedder(self):
        """Return a functional Keras model from images to L2-normalised embeddings (for export)."""
        images = keras.Input(shape=self.backbone.input.shape[1:], name="images")
        embeddings = self.head(self.backbone(images, training=False), training=False)
        normalized = keras.layers.UnitNormalization(axis=-1, name="l2_normalize")(embeddings)
        return keras.Model(images, normalized, name="embedder")

    # === Losses ===

    def _split_groups(self, tensor):
        return tf.split(tensor, GROUP_SIZES[self.config.loss], axis=0)

    def _metric_loss(self, embeddings, labels):
        """Compute the metric loss on a batch in the loss's layout, without weight decay."""
        config = self.config
        groups = self._split_groups(embeddings)
        group_labels = self._split_groups(labels)
        if config.loss == "triplet":
            return losses.triplet_loss(*groups, margin=config.margin)
        anchors, positives = groups
        candidates = losses.tile_candidates(positives, tf.shape(anchors)[0])
        if config.loss == "npair":
            return losses.npair_loss(anchors, candidates, *group_labels, l2_reg=config.l2_reg)
        return losses.contrastive_loss(anchors, candidates, *group_labels, margin=config.margin)

    def _synthesis_inputs(self, embeddings, labels, lam):
        """Return the embeddings to synthesise from and the labels of the pulled negatives.

        N-pair and contrastive: [N anchors; N*N pulled tile] with the tile's labels
        (row i*N + j has the label of positive j). Triplet: [anchors; positives; pulled
        negatives] with the negatives' labels.
        """
        groups = self._split_groups(embeddings)
        group_labels = self._split_groups(labels)
        if self.config.loss == "triplet":
            anchors, positives, negatives = groups
            pulled = hardness.pull_triplet_negatives(anchors, positives, negatives, lam)
            return tf.concat([anchors, positives, pulled], axis=0), group_labels[2]
        anchors, positives = groups
        tile = hardness.pull_npair_negatives(anchors, positives, lam)
        num_anchors = tf.shape(anchors)[0]
        flat_tile = tf.reshape(tile, [num_anchors * num_anchors, -1])
        tile_labels = tf.tile(group_labels[1], [num_anchors])
        return tf.concat([anchors, flat_tile], axis=0), tile_labels

    def _synthetic_metric_loss(self, synthetic, labels):
        """Compute J_syn on the head's embeddings of the synthetic rows."""
        config = self.config
        group_labels = self._split_groups(labels)
        if config.loss == "triplet":
            return losses.triplet_loss(*tf.split(synthetic, 3, axis=0), margin=config.margin)
        num_anchors = tf.shape(group_labels[0])[0]
        anchors = synthetic[:num_anchors]
        tile = tf.reshape(synthetic[num_anchors:], [num_anchors, num_anchors, -1])
        if config.loss == "npair":
            return losses.npair_loss(anchors, tile, *group_labels, l2_reg=config.l2_reg)
        return losses.contrastive_loss(anchors, tile, *group_labels, margin=config.margin)

    def compute_hdml_losses(self, images, labels, training=True):
        """Run the forward pass of one training step and return every loss and schedule value.

        Returns a dict of float32 scalars: `j_metric` (the loss of the metric optimiser),
        `j_m`, `weight_decay`, and with HDML also `j_syn`, `j_gen`, `j_recon`, `j_soft`,
        `j_cls`, `lambda` and `real_weight` (w).
        """
        config = self.config
        features = self.backbone(images, training=training)
        embeddings = self.head(features, training=training)
        features = tf.cast(features, tf.float32)
        embeddings = tf.cast(embeddings, tf.float32)
        decay = losses.weight_decay(self.decay_variables, config.weight_decay)
        j_m = self._metric_loss(embeddings, labels) + decay
        if not config.hdml:
            return {"j_metric": j_m, "j_m": j_m, "weight_decay": decay}

        lam = hardness.hardness_lambda(self.j_avg.value, config.alpha)
        real_weight = tf.stop_gradient(tf.exp(-config.beta / tf.cast(self.j_gen_avg.value, tf.float32)))
        synthesis_inputs, pulled_labels = self._synthesis_inputs(embeddings, labels, lam)

        # Real and synthetic rows share one generator batch; the generated features then go
        # back through the same embedding head, in a separate BatchNorm batch.
        num_real = tf.shape(embeddings)[0]
        generated = tf.cast(
            self.generator(tf.concat([embeddings, synthesis_inputs], axis=0), training=training), tf.float32
        )
        reconstructed = generated[:num_real]
        synthetic_features = generated[num_real:]
        synthetic_embeddings = tf.cast(self.head(synthetic_features, training=training), tf.float32)
        j_syn = self._synthetic_metric_loss(synthetic_embeddings, labels)
        j_metric = real_weight * j_m + (1.0 - real_weight) * j_syn

        j_recon = (1.0 - config.gen_lambda) * tf.reduce_sum(tf.square(reconstructed - features))
        num_anchors = tf.shape(self._split_groups(labels)[0])[0]
        anchor_labels = labels[:num_anchors]
        if config.loss == "triplet":
            pulled_features = synthetic_features[2 * num_anchors :]
        else:
            pulled_features = synthetic_features[num_anchors:]
        cross_entropy = keras.losses.sparse_categorical_crossentropy
        pulled_logits = tf.cast(self.classifier(pulled_features, training=training), tf.float32)
        anchor_logits = tf.cast(self.classifier(synthetic_features[:num_anchors], training=training), tf.float32)
        j_soft = (
            config.softmax_factor
            * config.gen_lambda
            * (
                tf.reduce_mean(cross_entropy(pulled_labels, pulled_logits, from_logits=True))
                + tf.reduce_mean(cross_entropy(anchor_labels, anchor_logits, from_logits=True))
            )
        )
        real_logits = tf.cast(self.classifier(features, training=training), tf.float32)
        j_cls = tf.reduce_mean(cross_entropy(labels, real_logits, from_logits=True))
        return {
            "j_metric": j_metric,
            "j_m": j_m,
            "weight_decay": decay,
            "j_syn": j_syn,
            "j_gen": j_recon + j_soft,
            "j_recon": j_recon,
            "j_soft": j_soft,
            "j_cls": j_cls,
            "lambda": lam,
            "real_weight": real_weight,
        }

    # === Training step ===

    def _optimized_losses(self):
        """Return (optimizer, loss name, variables) for each optimiser of the step."""
        pairs = [(self.metric_optimizer, "j_metric", self.metric_variables)]
        if self.config.hdml:
            pairs.append((self.generator_optimizer, "j_gen", self.generator.trainable_variables))
            pairs.append((self.classifier_optimizer, "j_cls", self.classifier.trainable_variables))
        return pairs

    def _apply_if(self, condition, updates):
        """Apply every optimiser's update when `condition` holds on the replicas.

        `condition` must be equal on every replica. Under a strategy that needs merge_call,
        the condition is evaluated in cross-replica context, because a tf.cond in replica
        context cannot contain the optimisers' merge_call.
        """

        def apply_all(*gradient_lists):
            for (optimizer, _, variables), gradients in zip(updates, gradient_lists):
                optimizer.apply_gradients(zip(gradients, variables))
            return tf.constant(True)

        gradient_lists = [gradients for _, gradients, _ in updates]
        context = tf.distribute.get_replica_context()
        needs_merge_call = (
            context is not None
            and tf.distribute.has_strategy()
            and not tf.__internal__.distribute.strategy_supports_no_merge_call()
        )
        if not needs_merge_call:
            tf.cond(condition, lambda: apply_all(*gradient_lists), lambda: tf.constant(False))
            return

        def cross_replica_apply(distribution, condition, *gradient_lists):
            first_condition = distribution.experimental_local_results(condition)[0]

            def apply_fn():
                distribution.extended.call_for_each_replica(apply_all, args=gradient_lists)
                return tf.constant(True)

            tf.cond(first_condition, apply_fn, lambda: tf.constant(False))

        context.merge_call(cross_replica_apply, args=(condition, *gradient_lists))

    def train_step(self, data):
        images, labels = data
        labels = tf.cast(labels, tf.int32)
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        optimized = self._optimized_losses()
        with tf.GradientTape(persistent=True) as tape:
            step_losses = self.compute_hdml_losses(images, labels, training=True)
            # The optimisers sum the replicas' gradients, so each replica's loss is divided
            # by the number of replicas: the update is the mean of the per-replica gradients.
            # A LossScaleOptimizer also multiplies the loss by its scale (and divides the
            # gradients back when applying them); other optimisers leave it unchanged.
            scaled_losses = [optimizer.scale_loss(step_losses[name] / num_replicas) for optimizer, name, _ in optimized]
        updates = [
            (optimizer, tape.gradient(loss, variables), variables)
            for (optimizer, _, variables), loss in zip(optimized, scaled_losses)
        ]
        del tape

        # Logged values and the schedule use the mean over replicas, identical on each.
        context = tf.distribute.get_replica_context()
        step_losses = {
            name: context.all_reduce(tf.distribute.ReduceOp.MEAN, value) for name, value in step_losses.items()
        }
        finite = tf.reduce_all([tf.math.is_finite(value) for value in step_losses.values()])
        self._apply_if(finite, updates)

        if self.config.hdml:
            self.j_avg.update(step_losses["real_weight"] * step_losses["j_m"])
            self.j_gen_avg.update(step_losses["j_gen"])
        else:
            self.j_avg.update(step_losses["j_m"])
        self.step_counter.assign_add(1)

        logs = dict(step_losses)
        logs["finite"] = tf.cast(finite, tf.float32)
        logs["j_avg"] = tf.identity(self.j_avg.value)
        logs["j_gen_avg"] = tf.identity(self.j_gen_avg.value)
        logs["lr"] = tf.cast(self.metric_optimizer.learning_rate, tf.float32)
        if isinstance(self.metric_optimizer, keras.optimizers.LossScaleOptimizer):
            logs["loss_scale"] = tf.cast(self.metric_optimizer.dynamic_scale, tf.float32)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # NOTE: Keras 3.15 reduces logs across workers with reduce(MEAN, axis=0), which
            # fails on scalars; a leading axis of 1 makes that reduction return the scalar.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs
