"""Render fMRI windows as pictures for image encoders, with a colour scale fitted on training data.

Two renderings of a window ``x`` of shape (T, R) (time points x ROIs):

* ``"heatmap"``: the ROI x time matrix ``x.T`` (rows: ROIs, columns: time points);
* ``"connectivity"``: the ROI x ROI Pearson correlation matrix of the window (optionally Fisher
  z-transformed). A ROI that is constant in the window has no correlation: its row and column are
  NaN and drawn in the "bad" colour (black by default), never as a fake value.

The colour scale is *fixed*: :meth:`ImageRenderer.fit` learns the limits ``vmin``/``vmax``
(percentiles of the values) from the arrays it is given, and only those, so fitting it on the
training split's windows keeps validation and test statistics out; every later image maps a value
to the same colour. The matrix is first resized (bilinear with antialiasing, or nearest) to the
output size, then mapped through a 256-entry colormap into ``uint8`` RGB (H, W, 3). The fitted
renderer saves to and loads from JSON.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> train = [rng.standard_normal((160, 200)).astype(np.float32) for _ in range(4)]
>>> renderer = ImageRenderer("heatmap", size=224).fit(train)
>>> renderer.transform(train[0]).shape
(224, 224, 3)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

__all__ = [
    "RENDERINGS",
    "ImageRenderer",
    "connectivity_matrix",
    "render_matrix",
    "fit_renderer_on_store",
    "store_windows",
]

#: Renderings understood by :class:`ImageRenderer`.
RENDERINGS = ("heatmap", "connectivity")
_FORMAT = "fmrilm.study.ImageRenderer"
_VERSION = 1
# At most this many values per array enter the percentile fit (a seeded subsample).
_FIT_SAMPLE = 20_000


def connectivity_matrix(window: np.ndarray, *, fisher_z: bool = False) -> np.ndarray:
    """Pearson correlation between the ROIs of one window.

    Parameters
    ----------
    window : ndarray of shape (T, R)
        Time points x ROIs.
    fisher_z : bool, default=False
        Apply ``arctanh`` (correlations clipped to +-0.999999 first; the diagonal stays finite).

    Returns
    -------
    ndarray of shape (R, R), float32
        Correlations; rows and columns of ROIs that are constant in the window are NaN.
    """
    x = np.asarray(window, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"window must be 2-D (T, R), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a correlation needs at least 2 time points, got {x.shape[0]}")
    xc = x - x.mean(axis=0, keepdims=True)
    norm = np.sqrt((xc**2).sum(axis=0))
    constant = norm <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = xc / norm
    z[:, constant] = np.nan
    corr = np.clip(z.T @ z, -1.0, 1.0)
    if fisher_z:
        corr = np.arctanh(np.clip(corr, -0.999999, 0.999999))
    return corr.astype(np.float32)


def _resize(matrix: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize a float matrix to (H, W); NaN cells stay NaN (nearest-propagated)."""
    import torch
    import torch.nn.functional as F

    if matrix.shape == size:
        return matrix
    nan = np.isnan(matrix)
    t = torch.from_numpy(np.where(nan, 0.0, matrix).astype(np.float32))
    t = rearrange(t, "h w -> 1 1 h w")
    if resample == "nearest":
        out = F.interpolate(t, size=size, mode="nearest")
    else:
        out = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    out = out[0, 0].numpy()
    if nan.any():
        m = torch.from_numpy(nan.astype(np.float32))
        m = F.interpolate(rearrange(m, "h w -> 1 1 h w"), size=size, mode="nearest")[0, 0]
        out = np.where(m.numpy() > 0.5, np.nan, out)
    return out


def render_matrix(
    matrix: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    colormap: str = "viridis",
    size: int | tuple[int, int] | None = 224,
    resample: str = "bilinear",
    bad_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Map a 2-D float matrix to a uint8 RGB image with fixed colour limits.

    Parameters
    ----------
    matrix : ndarray of shape (H0, W0)
    vmin, vmax : float
        Values at or below ``vmin`` get the first colormap colour, at or above ``vmax`` the last.
    colormap : str, default="viridis"
        Any matplotlib colormap name.
    size : int, (H, W) or None, default=224
        Output size; None keeps the matrix's shape (one pixel per cell).
    resample : {"bilinear", "nearest"}, default="bilinear"
    bad_color : 3 ints, default=(0, 0, 0)
        Colour of NaN cells.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
    """
    import matplotlib

    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    if not np.isfinite(vmin) or not np.isfinite(vmax) or vmax <= vmin:
        raise ValueError(f"need finite vmin < vmax, got {vmin}, {vmax}")
    if resample not in ("bilinear", "nearest"):
        raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        m = _resize(m, hw, resample)
    lut = (matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round()
    lut = lut.astype(np.uint8)
    nan = ~np.isfinite(m)
    scaled = (np.where(nan, vmin, m) - vmin) / (vmax - vmin)
    idx = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.int64)
    image = lut[idx]
    image[nan] = np.asarray(bad_color, dtype=np.uint8)
    return image


@dataclass
class ImageRenderer:
    """Window -> RGB image, with colour limits fitted on training windows only.

    Parameters
    ----------
    kind : {"heatmap", "connectivity"}, default="heatmap"
    size : int, default=224
        Side length of the square output image.
    colormap : str, default="viridis"
        Matplotlib colormap name (``"RdBu_r"`` suits the signed connectivity matrix).
    percentiles : (float, float), default=(1.0, 99.0)
        Percentiles of the training values taken as ``vmin`` and ``vmax``.
    fisher_z : bool, default=False
        Connectivity only: Fisher z-transform the correlations.
    resample : {"bilinear", "nearest"}, default="bilinear"
    symmetric : bool, default=False
        Make the limits symmetric around 0 (``+-max(|vmin|, |vmax|)``).
    seed : int, default=0
        Seed of the subsample of values used by :meth:`fit` (at most 20,000 per array).

    Attributes
    ----------
    vmin, vmax : float or None
        Fitted colour limits (None before :meth:`fit`).
    n_fit_arrays : int
        How many arrays the limits were fitted on.
    """

    kind: str = "heatmap"
    size: int = 224
    colormap: str = "viridis"
    percentiles: tuple[float, float] = (1.0, 99.0)
    fisher_z: bool = False
    resample: str = "bilinear"
    symmetric: bool = False
    seed: int = 0
    vmin: float | None = None
    vmax: float | None = None
    n_fit_arrays: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import matplotlib

        if self.kind not in RENDERINGS:
            raise ValueError(f"kind must be one of {RENDERINGS}, got {self.kind!r}")
        if int(self.size) < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}"
            )
        if self.colormap not in matplotlib.colormaps:
            raise ValueError(f"unknown matplotlib colormap {self.colormap!r}")
        if self.resample not in ("bilinear", "nearest"):
            raise ValueError(f"resample must be 'bilinear' or 'nearest', got {self.resample!r}")
        self.percentiles = (float(lo), float(hi))

    # ------------------------------------------------------------------ values

    def matrix(self, window: np.ndarray) -> np.ndarray:
        """The 2-D matrix this renderer draws for one (T, R) window (before resizing)."""
        x = np.asarray(window, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"window must be 2-D (T, R), got shape {x.shape}")
        if self.kind == "heatmap":
            return rearrange(x, "t r -> r t")
        return connectivity_matrix(x, fisher_z=self.fisher_z)

    def _fit_values(self, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "connectivity":
            matrix = matrix[~np.eye(matrix.shape[0], dtype=bool)]  # the diagonal is always 1
        values = np.ravel(matrix)
        values = values[np.isfinite(values)]
        if len(values) > _FIT_SAMPLE:
            values = rng.choice(values, _FIT_SAMPLE, replace=False)
        return values

    # ------------------------------------------------------------------ fit / transform

    def fit(self, windows: Iterable[np.ndarray]) -> ImageRenderer:
        """Fit the colour limits on ``windows`` (training windows only) and nothing else.

        Parameters
        ----------
        windows : iterable of ndarray (T, R)
            Training windows (arrays or tensors).

        Returns
        -------
        ImageRenderer
            ``self``.
        """
        rng = np.random.default_rng(self.seed)
        chunks, n = [], 0
        for w in windows:
            chunks.append(self._fit_values(self.matrix(np.asarray(w)), rng))
            n += 1
        if n == 0:
            raise ValueError("fit needs at least one window")
        values = np.concatenate(chunks)
        if len(values) == 0:
            raise ValueError("the training windows hold no finite values")
        lo, hi = (float(v) for v in np.percentile(values, self.percentiles))
        if self.symmetric:
            hi = max(abs(lo), abs(hi))
            lo = -hi
        if hi <= lo:  # constant training data: open a unit-width range around it
            lo, hi = lo - 0.5, lo + 0.5
        self.vmin, self.vmax, self.n_fit_arrays = lo, hi, n
        return self

    @property
    def is_fitted(self) -> bool:
        return self.vmin is not None and self.vmax is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("ImageRenderer is not fitted: call fit(training windows) first")

    def transform(self, window: np.ndarray) -> np.ndarray:
        """Render one window.

        Parameters
        ----------
        window : ndarray (T, R)

        Returns
        -------
        ndarray of shape (size, size, 3), uint8
        """
        self._check_fitted()
        return render_matrix(
            self.matrix(np.asarray(window)),
            vmin=self.vmin,
            vmax=self.vmax,
            colormap=self.colormap,
            size=self.size,
            resample=self.resample,
        )

    def transform_many(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        """Render several windows into a (B, size, size, 3) uint8 array."""
        images = [self.transform(w) for w in windows]
        if not images:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        return np.stack(images)

    def to_pil(self, window: np.ndarray):
        """Render one window as a ``PIL.Image.Image`` (mode RGB)."""
        from PIL import Image

        return Image.fromarray(self.transform(window), mode="RGB")

    def __call__(self, window: np.ndarray) -> np.ndarray:
        return self.transform(window)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return {"format": _FORMAT, "version": _VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRenderer:
        d = dict(d)
        if d.pop("format", _FORMAT) != _FORMAT:
            raise ValueError("not a serialised ImageRenderer")
        version = d.pop("version", _VERSION)
        if version != _VERSION:
            raise ValueError(f"unsupported ImageRenderer version {version}")
        d["percentiles"] = tuple(d.get("percentiles", (1.0, 99.0)))
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        """Write the renderer (settings and fitted limits) as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside and renamed: parallel study jobs may save the same renderer at once
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageRenderer:
        """Read a renderer written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def store_windows(
    store,
    split: str | None = "train",
    *,
    scheme: str = "site_stratified",
    window_length: int = 160,
    stride: int = 80,
    max_windows: int | None = None,
    seed: int = 0,
):
    """Scaled windows of one split of a store, as (T, R) float32 arrays, with their rows.

    Parameters
    ----------
    store : DatasetStore or path
    split : {"train", "val", "test"} or None
    scheme : str
    window_length, stride : int
    max_windows : int, optional
        Keep a seeded random subset of at most this many windows (sorted).
    seed : int

    Returns
    -------
    windows : list of ndarray (window_length, R)
    scan_index : ndarray of int
        Store row of each window.
    """
    from fmrilm.data import WindowDataset

    ds = WindowDataset(
        store, split=split, scheme=scheme, window_length=window_length, stride=stride
    )
    order = np.arange(len(ds))
    if max_windows is not None and len(order) > max_windows:
        order = np.sort(np.random.default_rng(seed).choice(order, max_windows, replace=False))
    items = [ds[int(i)] for i in order]
    return [it["window"].numpy() for it in items], np.asarray(
        [it["scan_index"] for it in items], dtype=np.int64
    )


def fit_renderer_on_store(
    store,
    renderer: ImageRenderer,
    *,
    scheme: str = "site_stratified",
    window_length: int = 160,
    stride: int = 80,
    max_windows: int | None = 256,
    seed: int = 0,
) -> ImageRenderer:
    """Fit ``renderer`` on windows of the scheme's **training** split only.

    Windows are robust-scaled with the scheme's training statistics (``WindowDataset``); validation
    and test scans are never read.

    Returns
    -------
    ImageRenderer
        The fitted ``renderer``, with the split recorded in ``renderer.extra``.
    """
    windows, rows = store_windows(
        store,
        "train",
        scheme=scheme,
        window_length=window_length,
        stride=stride,
        max_windows=max_windows,
        seed=seed,
    )
    renderer.fit(windows)
    renderer.extra.update(
        {
            "fit_split": "train",
            "scheme": scheme,
            "window_length": window_length,
            "stride": stride,
            "n_fit_scans": len(set(rows.tolist())),
        }
    )
    return renderer
