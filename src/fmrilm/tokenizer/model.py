"""The fMRI tokenizer: a vector-quantized masked autoencoder whose codes live in an LM's space.

Shapes: a window is ``(B, L, R)`` (time x ROI), scaled with the store's robust scaler. It is cut
into ``P = L / patch_length`` patches per ROI; one (ROI, patch) pair is one token, so a window
has ``R * P`` tokens, held as ``(B, R, P, ...)``.

Architecture (compute-lean: no attention over all R*P tokens):

- token embedding: ``Linear(patch_length -> d_model)`` of the visible values + learned ROI
  embedding (+ a projection of the atlas coordinates when given) + temporal patch position;
  hidden tokens carry a learned mask embedding instead of their values;
- encoder / decoder blocks: attention across the ROIs of one time patch (sequence R), then a
  depthwise convolution over the patches of one ROI (cheap temporal mixing), then an MLP;
- vector quantizer (``vector_quantize_pytorch.VectorQuantize``: cosine-similarity codes, EMA
  updates, k-means init, dead-code replacement, commitment loss) on the visible tokens;
- decoder input: the quantized visible tokens, and for hidden tokens a mask embedding plus an
  embedding of the closed-form spatial Gaussian conditional of their values given the visible
  values at the same time points. The decoder output for a hidden token is added to that
  conditional (residual), so an untrained decoder starts at the closed-form baseline;
- projector to the LM embedding space and a domain classifier behind gradient reversal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from fmrilm.baselines.reconstruction import adaptive_conditional_mean
from fmrilm.tokenizer.config import TokenizerConfig

__all__ = [
    "FMRITokenizer",
    "GradientReversal",
    "grad_reverse",
    "dann_lambda",
    "random_token_mask",
    "patchify",
    "unpatchify",
]

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- utilities
class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-lambd`` backward."""

    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


def dann_lambda(progress: float) -> float:
    """DANN schedule ``2 / (1 + exp(-10 p)) - 1`` for training progress ``p`` in [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def patchify(x: torch.Tensor, patch_length: int) -> torch.Tensor:
    """``(B, L, R) -> (B, R, P, patch_length)``."""
    return rearrange(x, "b (p l) r -> b r p l", l=patch_length)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """``(B, R, P, patch_length) -> (B, L, R)``."""
    return rearrange(x, "b r p l -> b (p l) r")


def random_token_mask(
    batch: int,
    n_rois: int,
    n_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Uniform random mask over the ``R * P`` tokens of each window: True = hidden.

    Exactly ``round(ratio * R * P)`` tokens are hidden per window.
    """
    n = n_rois * n_patches
    k = int(round(float(ratio) * n))
    noise = torch.rand(batch, n, generator=generator)
    hidden = torch.zeros(batch, n, dtype=torch.bool)
    if k > 0:
        idx = noise.argsort(dim=1)[:, :k]
        hidden.scatter_(1, idx, True)
    hidden = hidden.view(batch, n_rois, n_patches)
    return hidden.to(device) if device is not None else hidden


# ------------------------------------------------------------------------------- blocks
class SpatioTemporalBlock(nn.Module):
    """Attention across ROIs within a time patch, depthwise conv over patches, MLP."""

    def __init__(self, d: int, heads: int, mlp_ratio: float, kernel: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.tconv = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.norm3 = nn.LayerNorm(d)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, R, P, D)
        b, r, p, d = x.shape
        h = self.norm1(x)
        h = rearrange(h, "b r p d -> (b p) r d")
        q, k, v = rearrange(self.qkv(h), "n r (t h e) -> t n h r e", t=3, h=self.heads)
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        a = self.proj(rearrange(a, "n h r e -> n r (h e)"))
        x = x + rearrange(a, "(b p) r d -> b r p d", b=b)
        h = rearrange(self.norm2(x), "b r p d -> (b r) d p")
        h = rearrange(self.tconv(h), "(b r) d p -> b r p d", b=b)
        x = x + h
        x = x + self.mlp(self.norm3(x))
        return x


class Discriminator(nn.Module):
    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def domain_accuracy(logits_fmri: torch.Tensor, logits_text: torch.Tensor) -> dict[str, float]:
    """Balanced accuracy of a domain classifier (positive logit = fMRI): 0.5 = indistinguishable.

    Returns ``{"accuracy", "accuracy_fmri", "accuracy_text"}``.
    """
    acc_f = float((logits_fmri > 0).float().mean())
    acc_t = float((logits_text <= 0).float().mean())
    return {"accuracy": 0.5 * (acc_f + acc_t), "accuracy_fmri": acc_f, "accuracy_text": acc_t}


def build_quantizer(cfg: TokenizerConfig, sync_codebook: bool = False) -> VectorQuantize:
    return VectorQuantize(
        dim=cfg.code_dim,
        codebook_size=cfg.codebook_size,
        use_cosine_sim=True,
        decay=cfg.ema_decay,
        kmeans_init=cfg.kmeans_init,
        kmeans_iters=cfg.kmeans_iters,
        threshold_ema_dead_code=cfg.dead_code_threshold,
        commitment_weight=cfg.commitment_weight,
        sync_codebook=sync_codebook,
    )


# -------------------------------------------------------------------------------- model
class FMRITokenizer(nn.Module):
    """Adversarial vector-quantized masked autoencoder for fMRI ROI time series."""

    def __init__(self, config: TokenizerConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = TokenizerConfig()
        elif isinstance(config, dict):
            config = TokenizerConfig.from_dict(config)
        config.validate()
        self.config = cfg = config
        d = cfg.d_model
        self.scaler_stats: dict | None = None  # robust-scaler statistics of the store

        self.patch_embed = nn.Linear(cfg.patch_length, d)
        self.roi_embed = nn.Embedding(cfg.n_rois, d)
        self.pos_embed = nn.Embedding(cfg.max_patches, d)
        if cfg.roi_coords is not None:
            self.register_buffer(
                "roi_coords", torch.tensor(cfg.roi_coords, dtype=torch.float32), persistent=True
            )
            self.coord_embed = nn.Linear(self.roi_coords.shape[1], d)
        else:
            self.roi_coords = None
            self.coord_embed = None
        self.mask_embed = nn.Parameter(torch.zeros(d))
        self.encoder = nn.ModuleList(
            SpatioTemporalBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.temporal_kernel, cfg.dropout)
            for _ in range(cfg.encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(d)
        self.to_code = nn.Linear(d, cfg.code_dim)
        self.quantizer = build_quantizer(cfg)
        self.from_code = nn.Linear(cfg.code_dim, d)
        self.dec_mask_embed = nn.Parameter(torch.zeros(d))
        self.base_embed = nn.Linear(cfg.patch_length, d)
        self.dec_roi_embed = nn.Embedding(cfg.n_rois, d)
        self.dec_pos_embed = nn.Embedding(cfg.max_patches, d)
        self.decoder = nn.ModuleList(
            SpatioTemporalBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.temporal_kernel, cfg.dropout)
            for _ in range(cfg.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.patch_length)
        # hidden tokens get their own zero-initialised head: a residual over the conditional,
        # so that learning to reconstruct visible tokens cannot disturb the closed-form start
        self.residual_head = nn.Linear(d, cfg.patch_length)
        # alignment with the LM embedding space
        align_dim = cfg.align_dim or cfg.lm_dim
        self.projector = nn.Sequential(
            nn.Linear(cfg.code_dim, cfg.projector_hidden),
            nn.GELU(),
            nn.Linear(cfg.projector_hidden, align_dim),
        )
        self.discriminator = Discriminator(align_dim, cfg.discriminator_hidden)
        if cfg.align_dim:  # principal subspace of the text embeddings
            self.register_buffer("text_mean", torch.zeros(cfg.lm_dim))
            self.register_buffer("text_basis", torch.zeros(align_dim, cfg.lm_dim))
        # closed-form spatial Gaussian conditional (fitted on the training split)
        r = cfg.n_rois
        self.register_buffer("cond_mean", torch.zeros(r))
        self.register_buffer("cond_cov", torch.eye(r))
        self.register_buffer("cond_ridge", torch.tensor(float(cfg.conditional_ridge)))
        self.register_buffer("cond_alpha", torch.tensor(float(cfg.conditional_alpha)))
        self.register_buffer("cond_fitted", torch.tensor(False))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.roi_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        nn.init.normal_(self.dec_roi_embed.weight, std=0.02)
        nn.init.normal_(self.dec_pos_embed.weight, std=0.02)
        # the decoder starts by predicting the conditional (hidden) and ~0 (visible)
        for head in (self.head, self.residual_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # patch values are O(1): give the value path a useful scale from the start
        nn.init.normal_(self.patch_embed.weight, std=1.0 / math.sqrt(self.config.patch_length))

    # ----------------------------------------------------------- closed-form conditional
    def set_conditional(self, mean, cov, ridge: float, alpha: float | None = None) -> None:
        """Install the training-split ROI mean/covariance and the validation-chosen ridge
        (and window-adaptive shrinkage ``alpha``)."""
        self.cond_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.cond_cov.copy_(torch.as_tensor(cov, dtype=torch.float32))
        self.cond_ridge.fill_(float(ridge))
        if alpha is not None:
            self.cond_alpha.fill_(float(alpha))
        self.cond_fitted.fill_(True)

    @torch.no_grad()
    def conditional(self, windows: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Window-adaptive spatial Gaussian conditional of every entry given the visible ones
        of the same window: ``(B, L, R)``."""
        pred = adaptive_conditional_mean(
            windows.float(),
            visible,
            self.cond_mean.float(),
            self.cond_cov.float(),
            float(self.cond_ridge),
            float(self.cond_alpha),
        )
        return pred.to(windows.dtype)

    # ------------------------------------------------------------------------ pieces
    def _positions(self, n_patches: int, device) -> torch.Tensor:
        if n_patches > self.config.max_patches:
            raise ValueError(
                f"window has {n_patches} patches, more than max_patches={self.config.max_patches}"
            )
        return torch.arange(n_patches, device=device)

    def _roi_embedding(self) -> torch.Tensor:
        e = self.roi_embed.weight
        if self.coord_embed is not None:
            e = e + self.coord_embed(self.roi_coords)
        return e

    def encode_continuous(self, windows: torch.Tensor, hidden: torch.Tensor | None = None):
        """Encoder output before quantization: ``(B, R, P, code_dim)``."""
        cfg = self.config
        x = patchify(windows, cfg.patch_length)  # (B, R, P, l)
        b, r, p, _ = x.shape
        if r != cfg.n_rois:
            raise ValueError(f"expected {cfg.n_rois} ROIs, got {r}")
        pos = self._positions(p, x.device)
        h = self.patch_embed(x)
        if hidden is not None:
            hm = hidden[..., None].to(h.dtype)
            h = h * (1 - hm) + self.mask_embed * hm
        h = h + self._roi_embedding()[None, :, None, :] + self.pos_embed(pos)[None, None, :, :]
        for blk in self.encoder:
            h = blk(h)
        return self.to_code(self.encoder_norm(h))

    def nearest_codes(self, flat: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
        """Index of the most cosine-similar code for each vector of ``flat`` ``(..., code_dim)``.

        The choice ``VectorQuantize`` makes in evaluation (its codebook rows are unit vectors),
        computed in chunks of ``chunk_tokens`` vectors (default: a 16 MiB similarity matrix per
        chunk). The library's evaluation path also builds a one-hot matrix of all tokens x all
        codes in int64 (3.3 GB for 64 windows and 4,096 codes), which inference does not need
        and which took most of ``encode``'s time.
        """
        vq = self.quantizer
        codebook = vq.codebook  # (K, code_dim), unit rows
        if chunk_tokens is None:
            # Under glibc's 32 MiB mmap threshold the chunk's matrix is reused from the heap;
            # above it every chunk is mapped and page-faulted afresh (2.5x slower, measured).
            chunk_tokens = max(1, (4 << 20) // codebook.shape[0])
        x = F.normalize(vq.project_in(flat.float()), dim=-1, eps=1e-6)
        shape = x.shape[:-1]
        x = rearrange(x, "... c -> (...) c")
        idx = torch.cat([(xc @ codebook.T).argmax(-1) for xc in x.split(chunk_tokens)])
        return idx.reshape(shape)

    def _codebook_initialised(self) -> bool:
        # k-means initialisation happens inside the library's forward on its first batch; until
        # then evaluation must go through the library so that it initialises as it always has.
        return bool(self.quantizer._codebook.initted)

    def quantize(self, z: torch.Tensor, valid: torch.Tensor | None = None):
        """Quantize ``(B, R, P, C)``; ``valid`` (B, R, P) bool excludes tokens from the update.

        In evaluation mode (after the codebook is initialised) the codes come from
        ``nearest_codes`` and the outputs match ``VectorQuantize``'s: codebook rows, zeros and
        code -1 where ``valid`` is False, no commitment loss.
        """
        b, r, p, c = z.shape
        flat = rearrange(z, "b r p c -> b (r p) c")
        mask = None if valid is None else rearrange(valid, "b r p -> b (r p)")
        if mask is not None and bool(mask.all()):
            mask = None
        if not self.training and self._codebook_initialised():
            idx = self.nearest_codes(flat)
            zq = self.quantizer.project_out(self.quantizer.get_codes_from_indices(idx))
            if mask is not None:
                fill = 0.0 if self.quantizer.return_zeros_for_masked_padding else flat
                zq = torch.where(mask[..., None], zq, fill)
                idx = idx.masked_fill(~mask, -1)
            commit = flat.new_zeros(())
        else:
            zq, idx, commit = self.quantizer(flat, mask=mask)
        zq = rearrange(zq, "b (r p) c -> b r p c", r=r)
        idx = rearrange(idx, "b (r p) -> b r p", r=r)
        return zq, idx, commit

    def decode_quantized(
        self,
        zq: torch.Tensor,
        hidden: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder: quantized vectors (B, R, P, C) -> patches (B, R, P, patch_length)."""
        b, r, p, _ = zq.shape
        pos = self._positions(p, zq.device)
        h = self.from_code(zq)
        if hidden is not None:
            hm = hidden[..., None].to(h.dtype)
            hid_in = self.dec_mask_embed.expand_as(h)
            if base is not None:
                hid_in = hid_in + self.base_embed(base)
            h = h * (1 - hm) + hid_in * hm
        h = h + self.dec_roi_embed.weight[None, :, None, :] + self.dec_pos_embed(pos)[None, None]
        for blk in self.decoder:
            h = blk(h)
        h = self.decoder_norm(h)
        out = self.head(h)
        if hidden is not None:
            hm = hidden[..., None].to(out.dtype)
            res = self.residual_head(h)
            if base is not None:
                res = res + base
            out = out * (1 - hm) + res * hm
        return out

    # ------------------------------------------------------------------------ forward
    def forward(
        self,
        windows: torch.Tensor,
        hidden: torch.Tensor | None = None,
        roi_mask: torch.Tensor | None = None,
    ) -> dict:
        """Masked reconstruction.

        ``windows`` (B, L, R) scaled; ``hidden`` (B, R, P) bool (True = masked token, None = no
        masking); ``roi_mask`` (B, R) bool (False = constant ROI: never used as input).
        Returns a dict with ``pred`` (B, L, R), ``codes`` (B, R, P) (-1 where hidden),
        ``commit_loss``, ``zq`` (B, R, P, C), ``hidden`` and ``base`` (B, R, P, l) or None.
        """
        cfg = self.config
        b, length, r = windows.shape
        p = length // cfg.patch_length
        if hidden is None:
            hidden = torch.zeros(b, r, p, dtype=torch.bool, device=windows.device)
        hidden_in = hidden
        if roi_mask is not None:
            hidden_in = hidden | ~roi_mask[:, :, None].bool()
        x = windows
        if roi_mask is not None:
            x = x * roi_mask[:, None, :].to(x.dtype)
        z = self.encode_continuous(x, hidden_in)
        valid_tok = ~hidden_in
        zq, idx, commit = self.quantize(z, valid_tok)
        base = None
        if cfg.residual_over_conditional and bool(hidden.any()):
            vis_t = rearrange(~hidden_in, "b r p -> b p r").repeat_interleave(cfg.patch_length, 1)
            base = patchify(self.conditional(x, vis_t), cfg.patch_length)
        out = self.decode_quantized(zq, hidden if bool(hidden.any()) else None, base)
        codes = idx.masked_fill(hidden_in, -1)
        return {
            "pred": unpatchify(out),
            "codes": codes,
            "commit_loss": commit.sum(),
            "zq": zq,
            "hidden": hidden,
            "base": base,
        }

    @torch.no_grad()
    def encode(self, windows: torch.Tensor, roi_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Discrete codes ``(B, R, P)`` (int64) of scaled windows ``(B, L, R)`` (no masking)."""
        was = self.training
        self.eval()
        try:
            x = windows
            if roi_mask is not None:
                x = x * roi_mask[:, None, :].to(x.dtype)
            z = self.encode_continuous(x)
            _, idx, _ = self.quantize(z)
        finally:
            self.train(was)
        return idx

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors ``(..., code_dim)`` of integer codes."""
        return self.quantizer.get_codes_from_indices(codes.long().clamp_min(0))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruct scaled windows ``(B, L, R)`` from codes ``(B, R, P)`` alone."""
        was = self.training
        self.eval()
        try:
            out = self.decode_quantized(self.code_vectors(codes))
        finally:
            self.train(was)
        return unpatchify(out)

    # ------------------------------------------------------------------ alignment spaces
    @torch.no_grad()
    def fit_text_subspace(self, text_embeddings: torch.Tensor) -> None:
        """Principal subspace (``config.align_dim`` directions) of text-token embeddings
        ``(N, lm_dim)``, sampled by token frequency; a no-op without ``align_dim``."""
        if not self.config.align_dim:
            return
        x = text_embeddings.float()
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        self.text_mean.copy_(mean)
        self.text_basis.copy_(vh[: self.config.align_dim])

    def text_features(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Text embeddings in the space the domain classifier compares (LM or subspace)."""
        if not self.config.align_dim:
            return text_embeddings
        return (text_embeddings - self.text_mean) @ self.text_basis.T

    def align_features(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors in the space the domain classifier compares (the projector's output)."""
        return self.projector(code_vectors)

    def to_lm_space(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors as LM input embeddings ``(..., lm_dim)``."""
        z = self.projector(code_vectors)
        if not self.config.align_dim:
            return z
        return self.text_mean + z @ self.text_basis

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Vectors in the LM's input-embedding space: ``(B, R, P) -> (B, R, P, lm_dim)``."""
        return self.to_lm_space(self.code_vectors(codes))

    def codebook_lm_embeddings(self) -> torch.Tensor:
        """The whole codebook projected into the LM space: ``(codebook_size, lm_dim)``."""
        return self.to_lm_space(self.quantizer.codebook)

    def enable_codebook_sync(self) -> None:
        """Rebuild the quantizer so that its EMA/k-means/dead-code updates all-reduce across
        ranks. Call after ``torch.distributed`` is initialised and before training."""
        old = self.quantizer.state_dict()
        self.quantizer = build_quantizer(self.config, sync_codebook=True)
        self.quantizer.load_state_dict(old)

    # --------------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``scaler.json`` to ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "fmrilm-tokenizer",
            "format_version": FORMAT_VERSION,
            "lm_name": self.config.lm_name,
            "config": self.config.to_dict(),
        }
        (folder / "config.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        if self.scaler_stats is not None:
            (folder / "scaler.json").write_text(json.dumps(self.scaler_stats))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str = "cpu") -> FMRITokenizer:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("format") != "fmrilm-tokenizer":
            raise ValueError(f"{folder} is not an fmrilm tokenizer folder")
        model = cls(TokenizerConfig.from_dict(meta["config"]))
        state = load_file(str(folder / "model.safetensors"), device=map_location)
        model.load_state_dict(state)
        if (folder / "scaler.json").exists():
            model.scaler_stats = json.loads((folder / "scaler.json").read_text())
        model.eval()
        return model

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the saved robust scaler to raw ``(..., L, R)`` signals."""
        if self.scaler_stats is None:
            raise ValueError("this tokenizer has no scaler statistics")
        med = torch.as_tensor(self.scaler_stats["median"], dtype=raw.dtype)
        iqr = torch.as_tensor(self.scaler_stats["iqr"], dtype=raw.dtype)
        return (raw - med) / torch.where(iqr > 0, iqr, torch.ones_like(iqr))
