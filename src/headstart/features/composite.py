"""What a model's features are, and one extractor for all of them: a single backbone's last
features (plain ``FeatureExtractor``), multi-layer features, an ensemble of backbones
(``"tf_efficientnet_lite0+tf_efficientnet_lite2"``: features concatenated) and test-time
augmentation (``tta="flip"``: features of the image and its mirror, averaged).

Rules: every member and every view (plain, mirrored) is a ``FeatureExtractor`` with its own
preprocessing and its own cache namespace, so a later run with one member alone, or without
TTA, reuses what is cached; the estimator only ever calls ``.extract(paths)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.progress import ConsoleProgress, NullProgress
from headstart.data.images import DataConfig
from headstart.features.cache import FeatureCache
from headstart.features.engines import pixels_to_features
from headstart.features.extractor import ExtractionResult, FeatureExtractor
from headstart.models.backbones import DEFAULT_BACKBONE, Backbone, backbone_from_state, create_backbone
from headstart.models.card import ModelCard
from headstart.models.taps import LAYER_CHOICES, TTA_CHOICES, layer_group_widths

if TYPE_CHECKING:
    from torch.nn import Module


MEMBER_PREFIX = "+"  # bundle tensors of ensemble member i > 0 are backbone.+i.<name>


def backbone_names(spec: str) -> list[str]:
    """The member names of a backbone spec: ``a+b`` is an ensemble of ``a`` and ``b``."""
    names = [n.strip() for n in str(spec).split("+")]
    if not all(names):
        raise ParameterError("backbone", f"'{spec}' has an empty member: write name or name1+name2")
    return names


@dataclass
class FeatureSpec:
    """A model's features: its backbones (several = an ensemble, features concatenated in
    order), which layers (``last``/``multi``), the test-time augmentation, and which feature
    groups the head uses (``selected``: indices into ``group_widths``, None = all)."""

    members: list[Backbone]
    layers: str = "last"
    tta: str = "none"
    selected: list[int] | None = None
    member_widths: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.layers not in LAYER_CHOICES:
            raise ParameterError("features", f"unknown value '{self.layers}': choose last or multi")
        if self.tta not in TTA_CHOICES:
            raise ParameterError("tta", f"unknown value '{self.tta}': choose none or flip")

    @property
    def is_plain(self) -> bool:
        """One backbone's last features, no TTA: what every model was before these options."""
        return len(self.members) == 1 and self.layers == "last" and self.tta == "none"

    @property
    def name(self) -> str:
        return "+".join(b.name for b in self.members)

    def widths_of(self, i: int) -> list[int]:
        """Feature-group widths of member ``i`` (read from its network once, where not saved)."""
        while len(self.member_widths) <= i:
            b = self.members[len(self.member_widths)]
            self.member_widths.append(
                [b.num_features] if self.layers == "last" else layer_group_widths(b.model)
            )
        return self.member_widths[i]

    @property
    def group_widths(self) -> list[int]:
        """Every feature group's width, members in order."""
        return [w for i in range(len(self.members)) for w in self.widths_of(i)]

    @property
    def columns(self) -> np.ndarray | None:
        """Column indices of the selected groups (None: every column)."""
        if self.selected is None:
            return None
        bounds = np.cumsum([0, *self.group_widths])
        return np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in sorted(self.selected)])

    @property
    def width(self) -> int:
        cols = self.columns
        return sum(self.group_widths) if cols is None else len(cols)

    def describe(self) -> dict[str, Any]:
        """The bundle's ``features`` entry (and metrics.json's)."""
        return {
            "backbone": self.name,
            "layers": self.layers,
            "tta": self.tta,
            "members": [b.describe() for b in self.members],
            "group_widths": [self.widths_of(i) for i in range(len(self.members))],
            "selected_groups": self.selected,
            "num_features": self.width,
        }

    def state_arrays(self) -> dict[str, Any]:
        """Every member's weights: the first under its own names (as a plain model's), the others
        prefixed ``+i.``."""
        state = dict(self.members[0].state_arrays())
        for i, b in enumerate(self.members[1:], start=1):
            state.update({f"{MEMBER_PREFIX}{i}.{k}": v for k, v in b.state_arrays().items()})
        return state


def create_feature_spec(
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | Sequence[str | Path | None] | None = None,
    layers: str = "last",
    tta: str = "none",
    cache_dir: Path | None = None,
) -> FeatureSpec:
    """Build the backbones of ``backbone`` (``name`` or ``name1+name2``).

    Args:
        weights: a weights file for a single backbone; for an ensemble, None or one entry per
            member (None: that member's default weights).
    """
    names = backbone_names(backbone)
    if len(names) == 1:
        per_member: list[Any] = [weights]
    elif weights is None:
        per_member = [None] * len(names)
    elif isinstance(weights, (str, Path)) or len(weights) != len(names):
        raise ParameterError(
            "weights", f"an ensemble of {len(names)} backbones takes a list of as many files"
        )
    else:
        per_member = list(weights)
    members = [create_backbone(n, w, cache_dir) for n, w in zip(names, per_member)]
    return FeatureSpec(members, layers, tta)


def spec_from_bundle(card: ModelCard, state: dict[str, Any]) -> FeatureSpec:
    """A saved model's features: a card without a ``features`` entry is one backbone's last
    features (every bundle written before the entry existed)."""
    first = {k: v for k, v in state.items() if not k.startswith(MEMBER_PREFIX)}
    members = [backbone_from_state(card.backbone.name, first, card.backbone.describe())]
    info = card.features
    if info is None:
        return FeatureSpec(members)
    for i, d in enumerate(info.members[1:], start=1):
        prefix = f"{MEMBER_PREFIX}{i}."
        member_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        members.append(backbone_from_state(d.name, member_state, d.describe()))
    return FeatureSpec(members, info.layers, info.tta, info.selected_groups, info.group_widths)


class CompositeExtractor:
    """Features of several views (backbones, mirrors) of the same images, combined: views of
    one member averaged (TTA), members concatenated, then the selected groups kept."""

    def __init__(self, spec: FeatureSpec, views: list[list[FeatureExtractor]]) -> None:
        self.spec = spec
        self.views = views

    @property
    def namespaces(self) -> list[str]:
        return [v.namespace for member in self.views for v in member]

    def extract(self, paths: Sequence[str | Path], stage: str = "features") -> ExtractionResult:
        """Features for ``paths``, row-aligned, as ``FeatureExtractor.extract``; an image that
        fails in any view fails."""
        results = [[v.extract(paths, stage) for v in member] for member in self.views]
        flat = [r for member in results for r in member]
        blocks = [np.mean([r.features for r in member], axis=0) for member in results]
        features = np.concatenate(blocks, axis=1).astype(np.float32)
        cols = self.spec.columns
        if cols is not None:
            features = np.ascontiguousarray(features[:, cols])
        errors: dict[int, str] = {}
        for r in flat:
            for i, reason in r.errors.items():
                errors.setdefault(i, reason)
        features[list(errors)] = np.nan
        seconds: dict[str, float] = {}
        for r in flat:
            for k, v in r.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
        return ExtractionResult(
            features=features,
            errors=dict(sorted(errors.items())),
            hashes=flat[0].hashes,
            n_cached=min(r.n_cached for r in flat),
            n_extracted=max(r.n_extracted for r in flat),
            n_damaged_cache=sum(r.n_damaged_cache for r in flat),
            seconds=seconds,
            engine=flat[0].engine,
        )


def build_extractor(
    backbone: str | Backbone | FeatureSpec | None = None,
    weights: str | Path | Sequence[str | Path | None] | None = None,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    verbose: bool = True,
    precision: str = "auto",
    layers: str = "last",
    tta: str = "none",
) -> FeatureExtractor | CompositeExtractor:
    """Features for any (backbones, layers, tta) combination behind one interface:
    ``.extract(paths) -> ExtractionResult``.

    Args:
        backbone: a timm name, ``name1+name2`` (an ensemble), a built ``Backbone``, or a
            ``FeatureSpec`` (then ``weights``, ``layers`` and ``tta`` come from it).
        weights: see ``create_feature_spec``.
        layers: ``last`` or ``multi`` (every block group's pooled output, then the last features).
        tta: ``none`` or ``flip`` (image and mirror averaged; the mirrors cached on their own).
        cache_dir, engine, batch_size, workers, verbose, precision: as
            ``features.extractor.build_extractor``.

    A single backbone's last features without TTA give the plain ``FeatureExtractor`` (the
    same cache entries as ever); anything else a ``CompositeExtractor``.
    """
    cache = FeatureCache(cache_dir)
    if isinstance(backbone, FeatureSpec):
        spec = backbone
    elif isinstance(backbone, Backbone):
        spec = FeatureSpec([backbone], layers, tta)
    else:
        spec = create_feature_spec(backbone or DEFAULT_BACKBONE, weights, layers, tta, cache.root)
    progress = ConsoleProgress() if verbose else NullProgress()

    def view(i: int, flip: bool, owner: FeatureExtractor | None) -> FeatureExtractor:
        return FeatureExtractor(
            spec.members[i],
            cache=cache,
            engine=engine,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            precision=precision,
            layers=spec.layers,
            flip=flip,
            group_widths=spec.widths_of(i) if spec.layers == "multi" else None,
            share_engine_of=owner,
        )

    views = []
    for i in range(len(spec.members)):
        plain = view(i, False, None)
        views.append([plain, view(i, True, plain)] if spec.tta == "flip" else [plain])
    if spec.is_plain and spec.selected is None:
        return views[0][0]
    return CompositeExtractor(spec, views)


def feature_module(spec: FeatureSpec) -> Module:
    """uint8 NHWC pixels -> the model's features, as one torch module (the export's first part):
    each member's network on the same pixels, the mirror's features averaged in (TTA), members
    concatenated, the selected groups kept.

    Rule: an ensemble exports only where every member takes the same pixels (same eval resize,
    crop and interpolation), since the exported graph has one input.
    """
    import torch

    sizes = {_pixels_spec(b.data_config) for b in spec.members}
    if len(sizes) > 1:
        raise HeadstartError(
            f"cannot export the ensemble {spec.name}: its backbones take different input sizes "
            "(one graph input); predict with the model file, or train one backbone to export"
        )
    columns = spec.columns

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            views = [[pixels_to_features(b, spec.layers, flip=False)] for b in spec.members]
            if spec.tta == "flip":
                for b, v in zip(spec.members, views):
                    v.append(pixels_to_features(b, spec.layers, flip=True))
            self.views = torch.nn.ModuleList(torch.nn.ModuleList(v) for v in views)
            index = None if columns is None else torch.from_numpy(columns.astype(np.int64))
            self.columns: torch.Tensor | None
            self.register_buffer("columns", index)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            blocks = [torch.stack([v(pixels) for v in member]).mean(0) for member in self.views]  # type: ignore[attr-defined]
            out = torch.cat(blocks, dim=1)
            return out if self.columns is None else out.index_select(1, self.columns)

    return Features().eval()


def _pixels_spec(cfg: DataConfig) -> tuple[object, ...]:
    return (tuple(cfg["input_size"]), cfg.get("crop_pct"), cfg.get("crop_mode"), cfg.get("interpolation"))
