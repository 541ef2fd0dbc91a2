"""Anti-causal predictors: PREDICTED effectiveness of counterfactuals (EVALUATION.md).

For every variable v of the graph, one small CNN q(v | x, children(v)): it reads v from the
image and the values of v's children (the anti-causal direction: v's children carry information
about v that the image alone may hide, e.g. q(thickness | x, intensity)). Continuous variables
are regressed in standardised units (train mean/std) and returned in raw units; categorical
ones are classified. Derived from the graph only: no dataset names.

The predictors are trained on the train split's labelled examples and scored on the test
split; :attr:`Predictors.test_error` (MAE in raw units, or accuracy) is reported beside every
predicted number, since a predicted metric is only as good as its predictor. The penultimate
layer of the feature predictor (:meth:`Predictors.features`: the first categorical variable
without children, else the first variable without children) is the feature space of the
Frechet distance.

File ``predictors.pt``: plain values and state dicts (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import functools
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from cdae.atomic import atomic_path
from cdae.errors import DataError
from cdae.graph import CausalGraph

FORMAT = "cdae-predictors"
SCHEMA_VERSION = 2  # 2: the GroupNorm trunk (files of schema 1 must be re-trained)


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    """3x3 conv -> GroupNorm (up to 8 groups) -> SiLU."""
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            nn.GroupNorm(math.gcd(8, c_out), c_out), nn.SiLU()]


class PredictorNet(nn.Module):
    """conv trunk (resolution-agnostic) -> [pooled features, children values] -> hidden -> out.

    The trunk has three stages of (channels c, 2c, 4c), each a full-resolution conv then a
    stride-2 conv, with GroupNorm (README, the scorecard, compares it with schema 1's four plain
    stride-2 convs)."""

    def __init__(self, in_channels: int, n_inputs: int, n_out: int, channels: int,
                 hidden: int) -> None:
        super().__init__()
        c = channels
        self.trunk = nn.Sequential(
            *_conv(in_channels, c, 1), *_conv(c, c, 2),
            *_conv(c, 2 * c, 1), *_conv(2 * c, 2 * c, 2),
            *_conv(2 * c, 4 * c, 1), *_conv(4 * c, 4 * c, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(4 * c + n_inputs, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.hidden(torch.cat([self.trunk(x), inputs], dim=1))

    def forward(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, inputs))


@dataclass(frozen=True)
class Spec:
    """One predictor: the variable it predicts and the children it reads (graph order)."""

    var: str
    inputs: tuple[str, ...]
    classes: int  # 0 = continuous


def specs(graph: CausalGraph) -> tuple[Spec, ...]:
    """q(v | x, children(v)) for every variable, in graph order."""
    return tuple(Spec(v.name, graph.children(v.name), v.classes if v.is_categorical else 0)
                 for v in graph.variables)


def feature_variable(graph: CausalGraph) -> str:
    """Whose penultimate layer gives the Frechet features: the first categorical variable that
    reads no children, else the first variable that reads none, else the first variable."""
    plain = [s for s in specs(graph) if not s.inputs]
    for s in plain:
        if s.classes:
            return s.var
    return (plain[0] if plain else specs(graph)[0]).var


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


@dataclass
class Predictors:
    """The trained predictors of one graph, with the label standardisation and test errors."""

    graph: CausalGraph
    image_shape: tuple[int, int, int]
    nets: dict[str, PredictorNet]
    label_mean: np.ndarray  # (K,) raw units, train split
    label_std: np.ndarray
    test_error: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    # categorical variable -> the other seeds' predictors of it (``predictors.judges`` > 1)
    judges: dict[str, list[PredictorNet]] = field(default_factory=dict)

    def _inputs(self, spec: Spec, values: Mapping[str, np.ndarray], n: int) -> torch.Tensor:
        cols = []
        for name in spec.inputs:
            if name not in values:
                raise KeyError(f"q({spec.var} | x, ...) needs the values of {name}")
            j = self.graph.index(name)
            v = np.broadcast_to(np.asarray(values[name], np.float64), (n,))
            cols.append((v - self.label_mean[j]) / self.label_std[j])
        arr = np.stack(cols, 1) if cols else np.zeros((n, 0))
        return torch.as_tensor(arr, dtype=torch.float32)

    @torch.no_grad()
    def predict(self, images: np.ndarray, values: Mapping[str, np.ndarray] | None = None,
                variables: tuple[str, ...] | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        """uint8 images (N, C, H, W) -> {variable: (N,) raw value or class}. ``values`` holds
        the children values each predictor reads (raw units, (N,) or scalars); a NaN input
        gives a NaN prediction for that image (categorical: -1)."""
        values = values or {}
        out: dict[str, np.ndarray] = {}
        n = images.shape[0]
        for spec in specs(self.graph):
            if variables is not None and spec.var not in variables:
                continue
            net = self.nets[spec.var]
            inputs = self._inputs(spec, values, n)
            preds = []
            for lo in range(0, n, batch_size):
                y = net(_to_unit(images[lo:lo + batch_size]), inputs[lo:lo + batch_size])
                preds.append(y)
            y = torch.cat(preds) if preds else torch.zeros(0, max(spec.classes, 1))
            bad = ~torch.isfinite(inputs).all(dim=1)
            if spec.classes:
                cls = y.argmax(dim=1).double()
                cls[bad] = -1.0
                out[spec.var] = cls.numpy()
            else:
                j = self.graph.index(spec.var)
                raw = y[:, 0].double().numpy() * self.label_std[j] + self.label_mean[j]
                raw[bad.numpy()] = np.nan
                out[spec.var] = raw
        return out

    @torch.no_grad()
    def judge_classes(self, images: np.ndarray, var: str,
                      values: Mapping[str, np.ndarray] | None = None,
                      first: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
        """Every judge's class of categorical ``var`` for uint8 images (N, C, H, W) -> (J, N):
        row 0 the predictor's (:meth:`predict`; ``first`` when the caller already has it),
        then one row per other seed in :attr:`judges`. ``values``: the children values it
        reads, as for :meth:`predict`."""
        spec = next(s for s in specs(self.graph) if s.var == var)
        inputs = self._inputs(spec, values or {}, images.shape[0])
        rows = [] if first is None else [np.asarray(first, np.float64)]
        nets = [self.nets[var]] if first is None else []
        for net in [*nets, *self.judges.get(var, [])]:
            logits = [net(_to_unit(images[lo:lo + batch_size]), inputs[lo:lo + batch_size])
                      for lo in range(0, images.shape[0], batch_size)]
            rows.append(torch.cat(logits).argmax(dim=1).double().numpy()
                        if logits else np.zeros(0))
        return np.stack(rows)

    @torch.no_grad()
    def features(self, images: np.ndarray, values: Mapping[str, np.ndarray] | None = None,
                 batch_size: int = 256) -> np.ndarray:
        """Penultimate features (N, hidden) of the feature predictor (see the module doc)."""
        var = feature_variable(self.graph)
        spec = next(s for s in specs(self.graph) if s.var == var)
        inputs = self._inputs(spec, values or {}, images.shape[0])
        net = self.nets[var]
        feats = [net.features(_to_unit(images[lo:lo + batch_size]), inputs[lo:lo + batch_size])
                 for lo in range(0, images.shape[0], batch_size)]
        return torch.cat(feats).double().numpy()

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        blob = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                "graph": self.graph.to_json(), "image_shape": list(self.image_shape),
                "label_mean": [float(v) for v in self.label_mean],
                "label_std": [float(v) for v in self.label_std],
                "test_error": self.test_error, "settings": dict(self.settings),
                "nets": {k: net.state_dict() for k, net in self.nets.items()},
                "judges": {k: [net.state_dict() for net in nets]
                           for k, nets in self.judges.items()}}
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "Predictors":
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: predictors file not found",
                            hint="run `cdae train-predictors` first")
        from cdae.checkpoint import require_torch_archive

        require_torch_archive(p, "predictors file", hint="re-run `cdae train-predictors`")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
                ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{p}: cannot read the predictors ({first[:120]})",
                            hint="re-run `cdae train-predictors`") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise DataError(f"{p}: not a cdae predictors file",
                            hint="re-run `cdae train-predictors`")
        version = int(blob.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise DataError(f"{p}: written by a newer cdae", hint="upgrade cdae")
        if version < SCHEMA_VERSION:
            raise DataError(f"{p}: predictors of an older cdae (schema {version}, another "
                            "network)", hint="re-run `cdae train-predictors`")
        graph = CausalGraph.from_json(blob["graph"])
        shape = tuple(int(v) for v in blob["image_shape"])
        st = dict(blob["settings"])
        nets = {}
        for spec in specs(graph):
            net = _build(spec, shape, int(st["channels"]), int(st["hidden"]))
            net.load_state_dict(blob["nets"][spec.var])
            nets[spec.var] = net.eval()
        judges: dict[str, list[PredictorNet]] = {}
        for var, states in dict(blob.get("judges", {})).items():  # absent in older files
            spec = next(s for s in specs(graph) if s.var == var)
            judges[var] = []
            for state in states:
                net = _build(spec, shape, int(st["channels"]), int(st["hidden"]))
                net.load_state_dict(state)
                judges[var].append(net.eval())
        return cls(graph, shape, nets, np.asarray(blob["label_mean"], np.float64),  # type: ignore[arg-type]
                   np.asarray(blob["label_std"], np.float64), dict(blob["test_error"]), st,
                   judges)


def _build(spec: Spec, image_shape: tuple[int, ...], channels: int, hidden: int) -> PredictorNet:
    return PredictorNet(image_shape[0], len(spec.inputs), spec.classes or 1, channels, hidden)


def _fit(spec: Spec, images: np.ndarray, labels: np.ndarray, std_labels: np.ndarray,
         train_rows: np.ndarray, j: int, inp_idx: list[int], seed: int, *,
         shape: tuple[int, ...], steps: int, batch_size: int, lr: float, channels: int,
         hidden: int) -> tuple[PredictorNet, float]:
    """One predictor of ``spec`` (variable index ``j``) fitted on ``train_rows``, seeded by
    ``seed + j``; returns it in eval mode and its last training loss."""
    torch.manual_seed(seed + j)
    net = _build(spec, shape, channels, hidden)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed + j)
    last = float("nan")
    net.train()
    for _ in range(steps):
        b = np.sort(rng.choice(train_rows, size=min(batch_size, train_rows.size),
                               replace=False))
        x = _to_unit(images[b])
        # light augmentation: a one-pixel random shift keeps small CNNs from memorising
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        inputs = torch.as_tensor(std_labels[b][:, inp_idx], dtype=torch.float32)
        out = net(x, inputs)
        if spec.classes:
            loss = nn.functional.cross_entropy(out, torch.as_tensor(labels[b, j]).long())
        else:
            target = torch.as_tensor(std_labels[b, j], dtype=torch.float32)
            loss = nn.functional.smooth_l1_loss(out[:, 0], target, beta=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = float(loss.detach())
    return net.eval(), last


def train(images: np.ndarray, labels: np.ndarray, label_mask: np.ndarray, split: np.ndarray,
          graph: CausalGraph, label_mean: np.ndarray, label_std: np.ndarray, *, steps: int,
          batch_size: int, lr: float, channels: int, hidden: int, seed: int,
          judges: int = 1, log: Callable[[str], None] | None = None) -> Predictors:
    """Fit q(v | x, children(v)) for every variable on the train split (split == 0) where v and
    its children are labelled (``label_mask``) and score each on the test split (split == 1):
    MAE in raw units (continuous) or accuracy (categorical); NaN when the test split holds no
    labelled example. ``judges`` > 1 fits each categorical predictor that many times, with
    seeds ``seed``, ``seed + 1``, ...: the first is the predictor, the others are
    :attr:`Predictors.judges` beside it. Seeded: the same inputs give the same weights on one
    machine."""
    nets: dict[str, PredictorNet] = {}
    extra: dict[str, list[PredictorNet]] = {}
    errors: dict[str, dict[str, float]] = {}
    shape = tuple(images.shape[1:])
    labels = np.asarray(labels, np.float64)
    std_labels = (labels - label_mean) / label_std
    for spec in specs(graph):
        j = graph.index(spec.var)
        cols = [j] + [graph.index(c) for c in spec.inputs]
        ok = np.isfinite(labels[:, cols]).all(1)
        train_rows = np.flatnonzero(ok & label_mask[:, cols].all(1) & (split == 0))
        test_rows = np.flatnonzero(ok & (split == 1))
        if train_rows.size == 0:
            raise DataError(f"no labelled train example of {spec.var}"
                            + (f" with its children {', '.join(spec.inputs)}"
                               if spec.inputs else ""),
                            hint="predictors need labels; check data.labeled_fraction")
        inp_idx = [graph.index(c) for c in spec.inputs]
        fit = functools.partial(_fit, spec, images, labels, std_labels, train_rows, j, inp_idx,
                                shape=shape, steps=steps, batch_size=batch_size, lr=lr,
                                channels=channels, hidden=hidden)
        net, last = fit(seed)
        nets[spec.var] = net
        if spec.classes and judges > 1:
            extra[spec.var] = [fit(seed + k)[0] for k in range(1, judges)]
        pred = Predictors(graph, shape, {spec.var: net}, label_mean, label_std,  # type: ignore[arg-type]
                          judges={k: v for k, v in extra.items() if k == spec.var})
        err: dict[str, float] = {"train_examples": float(train_rows.size),
                                 "test_examples": float(test_rows.size),
                                 "final_train_loss": last}
        if test_rows.size:
            values = {c: labels[test_rows, graph.index(c)] for c in spec.inputs}
            p = pred.predict(images[test_rows], values, variables=(spec.var,))[spec.var]
            truth = labels[test_rows, j]
            if spec.classes:
                err["test_accuracy"] = float(np.mean(p == truth))
                if spec.var in extra:
                    every = pred.judge_classes(images[test_rows], spec.var)
                    for k in range(1, every.shape[0]):
                        err[f"test_accuracy_judge_{k}"] = float(np.mean(every[k] == truth))
            else:
                err["test_mae"] = float(np.mean(np.abs(p - truth)))
        else:
            err["test_accuracy" if spec.classes else "test_mae"] = float("nan")
        errors[spec.var] = err
        if log is not None:
            log(f"q({spec.var} | x{''.join(', ' + c for c in spec.inputs)}): "
                + ", ".join(f"{k}={v:.4g}" for k, v in err.items()))
    return Predictors(graph, shape, nets, np.asarray(label_mean, np.float64),  # type: ignore[arg-type]
                      np.asarray(label_std, np.float64), errors,
                      {"steps": steps, "batch_size": batch_size, "lr": lr, "channels": channels,
                       "hidden": hidden, "seed": seed, "judges": judges}, extra)
