"""Re-fitting a trained tokenizer's alignment with a language model, on its frozen codebook.

With ``align_through_encoder: false`` (the default) the reversed gradient stops at the code
vectors: the projector into the LM space and the domain classifier never act on the autoencoder.
So they can be fitted again on a trained tokenizer's codebook alone, in a minute on a CPU, for
another LM or with another objective, and the codes (and every reconstruction figure) stay the
same. :func:`realign` does that:

1. the projector and the domain classifier are re-initialised (and, with ``align_dim``, the text
   subspace is refitted to the new LM);
2. for ``steps`` steps, code vectors drawn from the codebook (uniformly, or by the usage
   ``code_weights``) and text-token embeddings of real text meet the domain classifier behind
   gradient reversal (DANN schedule), as in training;
3. a linear map back from the projector's output to the code vector is trained beside them; with
   ``cycle_weight > 0`` its error (:func:`cycle_loss`) also reaches the projector. Trained only
   against the domain classifier, the projector is free to merge codes: on ABIDE a ridge on the
   projected rows predicts age with MAE 4.74 against 3.60 from the code vectors themselves
   (``benchmarks/results/code_probe.json``). The cycle term asks it to keep them apart.

The returned accuracy is the co-trained classifier's on held-out text, as the tokenizer
evaluation reports it. A fresh classifier is the honest check (an adversary that lost the game
can be beaten by a new one): ``python -m benchmarks.alignment`` fits one on the saved model.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fmrilm.tokenizer.model import dann_lambda, domain_accuracy, grad_reverse

__all__ = ["RealignConfig", "cycle_loss", "realign"]


def cycle_loss(inverse: nn.Module, features: torch.Tensor, code_vectors: torch.Tensor):
    """Share of the code vectors' variance that ``inverse(features)`` fails to recover.

    ``1 - cycle_loss`` is the R^2 of the code vectors recovered from their projection.
    """
    err = (inverse(features) - code_vectors).pow(2).sum()
    spread = (code_vectors - code_vectors.mean(0)).pow(2).sum()
    return err / spread.clamp_min(1e-12)


@dataclass
class RealignConfig:
    """Settings of :func:`realign`.

    Attributes
    ----------
    steps : int
        Adversarial steps.
    batch_size : int
        Code vectors (and as many text tokens) per step.
    lr : float
        AdamW learning rate of the projector, domain classifier and inverse map.
    cycle_weight : float
        Weight of :func:`cycle_loss` (0: the plain adversarial objective of training).
    seed : int
    """

    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    cycle_weight: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        if self.lr <= 0 or self.cycle_weight < 0:
            raise ValueError("lr must be > 0 and cycle_weight >= 0")


def _reset(module: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def realign(
    model,
    text_domain,
    config: RealignConfig | None = None,
    *,
    code_weights: torch.Tensor | None = None,
    progress: bool = False,
):
    """Fit the projector and domain classifier of ``model`` again on its frozen codebook.

    Parameters
    ----------
    model : FMRITokenizer
        A trained tokenizer with ``config.align`` on; left unchanged (a copy is trained and
        returned).
    text_domain : TextDomain
        Real text-token embeddings of the LM to align with (``build_text_domain(lm_name)``);
        its width must equal the model's ``lm_dim``.
    config : RealignConfig, optional
    code_weights : Tensor of shape (codebook_size,), optional
        How often to draw each code (e.g. its usage on the training split); uniform by default.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (FMRITokenizer, dict)
        The realigned copy, and ``{"config", "history", "discriminator", "cycle_r2"}``: the
        co-trained classifier's balanced accuracy on the whole codebook against held-out text,
        and the R^2 of the codebook recovered from its projection by the inverse map.
    """
    cfg = config or RealignConfig()
    cfg.validate()
    if not model.config.align:
        raise ValueError("the tokenizer was built without alignment (config.align is false)")
    if text_domain.dim != model.config.lm_dim:
        raise ValueError(
            f"the text domain's embeddings are {text_domain.dim}-wide, the tokenizer's LM space "
            f"is {model.config.lm_dim}-wide (lm_name {model.config.lm_name!r})"
        )
    k = model.config.codebook_size
    weights = torch.ones(k) if code_weights is None else torch.as_tensor(code_weights).float()
    if weights.shape != (k,) or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"code_weights must be {k} finite non-negative numbers")
    if float(weights.sum()) <= 0:
        raise ValueError("code_weights sum to zero")

    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    codebook = out.code_vectors(torch.arange(k)).detach()
    g = torch.Generator().manual_seed(cfg.seed)
    _reset(out.projector, cfg.seed)
    _reset(out.discriminator, cfg.seed + 1)
    if out.config.align_dim:
        out.fit_text_subspace(text_domain.sample(20_000, "train", g))
    trained = list(out.projector.parameters()) + list(out.discriminator.parameters())
    for p in trained:
        p.requires_grad_(True)
    width = out.config.align_dim or out.config.lm_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        inverse = nn.Linear(width, out.config.code_dim)
    opt = torch.optim.AdamW([*trained, *inverse.parameters()], lr=cfg.lr)
    n = cfg.batch_size
    history = []
    bar = tqdm(range(cfg.steps), desc="realign", disable=not progress)
    for step in bar:
        lambd = dann_lambda(step / cfg.steps)
        v = codebook[torch.multinomial(weights, n, replacement=True, generator=g)]
        z = out.align_features(v)
        t = out.text_features(text_domain.sample(n, "train", g))
        logits = out.discriminator(grad_reverse(torch.cat([z, t]), lambd))
        labels = torch.cat([torch.ones(n), torch.zeros(n)])
        domain = F.binary_cross_entropy_with_logits(logits, labels)
        # the inverse map always learns (so cycle_r2 measures what a linear map recovers, also
        # at cycle_weight 0); the projector feels its error scaled by cycle_weight
        z_inv = z.detach() + cfg.cycle_weight * (z - z.detach())
        cyc = cycle_loss(inverse, z_inv, v)
        loss = domain + cyc
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite realignment loss at step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            acc = float(((logits > 0).float() == labels).float().mean())
            history.append(
                {"step": step, "domain": domain.item(), "cycle": cyc.item(), "train_acc": acc}
            )
            bar.set_postfix(domain=f"{domain.item():.3f}", cycle=f"{cyc.item():.3f}")
    for p in out.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        text = out.text_features(text_domain.sample(k, "heldout", g))
        disc = domain_accuracy(
            out.discriminator(out.align_features(codebook)), out.discriminator(text)
        )
        cycle_r2 = 1.0 - float(cycle_loss(inverse, out.align_features(codebook), codebook))
    return out, {
        "config": asdict(cfg),
        "history": history,
        "discriminator": disc,
        "cycle_r2": cycle_r2,
    }
