"""The anomaly-detection models, one module per model family: memae.py (MemAE, the plain AE
and MemAE-nonSpar, 2-D and 3-D) and daad.py (DAAD's U-Net with a block memory per scale).
build_model and model_config_from_dict pick the family from a config."""

from memae_fused.anomaly.models.daad import DAAD, DAAD_VARIANTS, DAADConfig
from memae_fused.anomaly.models.memae import (ACTIVATIONS, VARIANTS, AEOutput, MemAE, ModelConfig,
                                              cifar_config, memae_loss, mnist_config,
                                              video_config)

__all__ = ["ACTIVATIONS", "ALL_VARIANTS", "DAAD", "DAADConfig", "DAAD_VARIANTS", "VARIANTS",
           "AEOutput", "MemAE", "ModelConfig", "build_model", "cifar_config", "memae_loss",
           "mnist_config", "model_config_from_dict", "video_config"]

ALL_VARIANTS = VARIANTS + DAAD_VARIANTS


def build_model(config):
    """The model a ModelConfig (MemAE, AE, MemAE-nonSpar) or a DAADConfig describes."""
    return DAAD(config) if isinstance(config, DAADConfig) else MemAE(config)


def model_config_from_dict(d: dict):
    """ModelConfig or DAADConfig, as a checkpoint stored it."""
    return DAADConfig.from_dict(d) if d.get("variant") in DAAD_VARIANTS else ModelConfig.from_dict(d)
