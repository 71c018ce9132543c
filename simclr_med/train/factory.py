"""Config → compiled models. Call inside `strategy.scope()`."""
from __future__ import annotations

import keras

from simclr_med.config import Config
from simclr_med.models import heads, resnet, trainable
from simclr_med.train.optimizers import build_optimizer
from simclr_med.train.schedules import WarmupCosine


def set_precision(precision: str) -> None:
    keras.mixed_precision.set_global_policy(precision)


def make_encoder(cfg: Config, sync_bn: bool) -> keras.Model:
    return resnet.build_resnet(cfg.resnet_depth, cfg.width_multiplier, sync_bn=sync_bn,
                               zero_init_residual=cfg.zero_init_residual, winograd=cfg.winograd)


def make_optimizer(cfg: Config, num_train_examples: int, unadapted=()) -> keras.optimizers.Optimizer:
    """LR schedule (batch-scaled, warmup + cosine) and the chosen optimizer.

    Wrapped in a LossScaleOptimizer for float16, and also when non-finite steps may be skipped:
    its skip-on-non-finite-gradient logic is exactly that. It tests each replica's gradients before
    they are summed; replicas agree because a NaN on one reaches the others' gradients through the
    gathered negatives and synchronized BatchNorm (a frozen encoder's linear head has neither).
    """
    total = cfg.total_steps(num_train_examples)
    warmup = min(cfg.warmup_steps(num_train_examples), total)
    schedule = WarmupCosine(cfg.scaled_learning_rate(), warmup, total)
    opt = build_optimizer(cfg.optimizer, schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov, unadapted=unadapted)
    if cfg.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(opt)
    if cfg.skip_nonfinite_steps > 0:
        return keras.optimizers.LossScaleOptimizer(opt, initial_scale=1.0, dynamic_growth_steps=2**30)
    return opt


def _compile(model: keras.Model, cfg: Config, num_train_examples: int, unadapted=()) -> keras.Model:
    model.rollback_nonfinite = cfg.skip_nonfinite_steps > 0
    model.compile(optimizer=make_optimizer(cfg, num_train_examples, unadapted), jit_compile=cfg.use_xla,
                  steps_per_execution=cfg.steps_per_execution)
    # Create optimizer slots now, so a checkpoint restores them instead of deferring.
    model.optimizer.build(model.trainable_variables)
    return model


def contrastive_model(
    cfg: Config, *, num_train_examples: int, num_replicas: int = 1
) -> trainable.ContrastiveModel:
    sync_bn = num_replicas > 1
    encoder = make_encoder(cfg, sync_bn)
    head = heads.build_projection_head(encoder.output_shape[-1], num_layers=cfg.num_proj_layers,
                                       out_dim=cfg.proj_out_dim, sync_bn=sync_bn)
    model = trainable.ContrastiveModel(encoder, head, temperature=cfg.temperature,
                                       hidden_norm=cfg.hidden_norm)
    model.build((None, cfg.image_size, cfg.image_size, 3))
    return _compile(model, cfg, num_train_examples)


def classifier(cfg: Config, *, num_classes: int, multi_label: bool, num_train_examples: int,
               num_replicas: int = 1) -> trainable.Classifier:
    encoder = make_encoder(cfg, num_replicas > 1)
    model = trainable.Classifier(encoder, num_classes, multi_label=multi_label,
                              freeze_encoder=cfg.train_mode == "lineareval")
    model.build((None, cfg.image_size, cfg.image_size, 3))
    return _compile(model, cfg, num_train_examples, unadapted=[model.head.name])
