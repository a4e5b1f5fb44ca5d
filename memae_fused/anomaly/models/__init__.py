"""The anomaly-detection models, one module per model family: memae.py (MemAE, the plain AE
and MemAE-nonSpar, 2-D and 3-D), daad.py (DAAD's U-Net with a block memory per scale) and
mnad.py (MNAD's prediction and reconstruction models). build_model and
model_config_from_dict pick the family from a config."""

from memae_fused.anomaly.models.daad import DAAD, DAAD_VARIANTS, DAADConfig
from memae_fused.anomaly.models.mnad import MNAD, MNAD_VARIANTS, MNADConfig, mnad_loss
from memae_fused.anomaly.models.memae import (ACTIVATIONS, VARIANTS, AEOutput, MemAE, ModelConfig,
                                              cifar_config, memae_loss, mnist_config,
                                              video_config)

__all__ = ["ACTIVATIONS", "ALL_VARIANTS", "DAAD", "DAADConfig", "DAAD_VARIANTS", "MNAD",
           "MNADConfig", "MNAD_VARIANTS", "VARIANTS", "AEOutput", "MemAE", "ModelConfig",
           "build_model", "cifar_config", "loss_terms", "memae_loss", "mnad_loss", "mnist_config",
           "model_config_from_dict", "video_config"]

ALL_VARIANTS = VARIANTS + DAAD_VARIANTS + MNAD_VARIANTS


def build_model(config):
    """The model a ModelConfig (MemAE, AE, MemAE-nonSpar), DAADConfig or MNADConfig describes."""
    if isinstance(config, DAADConfig):
        return DAAD(config)
    return MNAD(config) if isinstance(config, MNADConfig) else MemAE(config)


def model_config_from_dict(d: dict):
    """ModelConfig, DAADConfig or MNADConfig, as a checkpoint stored it."""
    if d.get("variant") in DAAD_VARIANTS:
        return DAADConfig.from_dict(d)
    return MNADConfig.from_dict(d) if d.get("variant") in MNAD_VARIANTS else ModelConfig.from_dict(d)


def loss_terms(config, x, out):
    """(total loss, its named terms) of a model family's output on batch x."""
    if isinstance(config, MNADConfig):
        return mnad_loss(out, config)
    total, recon, entropy = memae_loss(x, out, config.effective_entropy_weight)
    return total, {"recon": recon, "entropy": entropy}
