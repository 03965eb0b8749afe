"""Phase I feature cache: the frozen base's pooled features, computed once per (image, augmentation draw).

In Phase I only the head trains, and the frozen base runs in inference mode (no dropout, no drop-connect,
batch norm on its running statistics), so the pooled feature vector of an input never changes. Running
the base every epoch would recompute the same numbers; on a CPU that is nearly all of the cost.

How augmentation interacts: without the cache every epoch sees a fresh random augmentation of every
image. With the cache, each training image gets `draws` augmentation draws computed up front, and each
epoch picks one of them at random per image. Phase I therefore sees `draws` variants per image instead of
one per epoch; the base runs images x draws times instead of images x epochs. With draws close to the
number of epochs the two are nearly the same; Phase II (which cannot use a cache because the top of the
base trains) always draws fresh augmentations. Validation images are not augmented: one draw each.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from qc_cloud.training.augment import Augmentation
from qc_cloud.training.batches import input_batches
from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.distributed import World
from qc_cloud.training.models import DefectClassifier
from qc_contract.model_manifest import Preprocessing


@dataclass
class FeatureCache:
    features: np.ndarray  # (images, draws, C) float32
    labels: np.ndarray  # (images,) float32

    @property
    def draws(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return self.features.shape[0]

    @classmethod
    def build(
        cls,
        model: DefectClassifier,
        dataset: Dataset,
        samples: Sequence[Sample],
        spec: Preprocessing,
        *,
        augmentation: Augmentation | None,
        draws: int,
        seed: int,
        batch_size: int,
        progress: bool = True,
        desc: str = "caching features",
        world: World | None = None,
    ) -> FeatureCache:
        """Run the (frozen, eval-mode) base over every sample `draws` times (once when not augmenting). Under
        torchrun each process computes its share of the images and every process gets the whole cache."""
        world = world or World()
        mine = world.share(range(len(samples)))
        if augmentation is None or augmentation.is_identity:
            augmentation, draws = None, 1
        features = np.zeros((len(samples), draws, model.head.in_features), dtype=np.float32)
        model.eval()
        total = len(mine) * draws
        with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
            for draw in range(draws):
                for inputs, _, chunk in input_batches(
                    dataset, samples, spec, batch_size, augmentation=augmentation, seed=seed, draw=draw, order=mine
                ):
                    features[chunk, draw] = model.pooled(torch.from_numpy(inputs)).numpy()
                    bar.update(len(chunk))
        features = world.sum_rows(features)
        labels = np.asarray([s.label for s in samples], dtype=np.float32)
        return cls(features, labels)

    def epoch_batches(
        self, batch_size: int, rng: np.random.Generator, *, shuffle: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (features N x C, labels N): every image once, each with a randomly picked draw."""
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        picks = rng.integers(0, self.draws, size=len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield torch.from_numpy(self.features[idx, picks[idx]]), torch.from_numpy(self.labels[idx])
