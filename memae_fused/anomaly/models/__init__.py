"""The anomaly-detection models, one module per model family: memae.py (MemAE, the plain AE
and MemAE-nonSpar, 2-D and 3-D)."""

from memae_fused.anomaly.models.memae import (ACTIVATIONS, VARIANTS, AEOutput, MemAE, ModelConfig,
                                              build_model, cifar_config, memae_loss, mnist_config,
                                              video_config)

__all__ = ["ACTIVATIONS", "VARIANTS", "AEOutput", "MemAE", "ModelConfig", "build_model",
           "cifar_config", "memae_loss", "mnist_config", "video_config"]
