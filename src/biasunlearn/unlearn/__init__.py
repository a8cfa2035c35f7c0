"""BiasUnlearn: sets, losses, the swap/early-stop controller, the trainer, and the whole pipeline."""
from .config import UnlearnConfig, make_config
from .controller import SwapController
from .losses import forward_kl, npo_loss, npo_loss_token_mean, retention_loss
from .sets import UnlearnSets

__all__ = ["UnlearnConfig", "make_config", "SwapController", "UnlearnSets", "npo_loss", "npo_loss_token_mean",
           "retention_loss", "forward_kl", "run_training"]


def run_training(cfg, **kw):
    from .pipeline import run_training as _run

    return _run(cfg, **kw)
