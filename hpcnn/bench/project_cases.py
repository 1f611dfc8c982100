"""What `hpcnn bench project` projects: the models, their samples and batches, and their perfmodel chains."""
from fractions import Fraction

__all__ = ["CASES", "STRONG_BATCH", "WEAK_PER_RANK", "MODES", "GIB", "Chains"]

# model -> one sample's shape (C, *S)
CASES = {"meshnet": (18, 2048, 2048), "resnet50": (3, 224, 224), "cosmoflow": (4, 512, 512, 512)}
# Strong scaling: a global batch per model (meshnet and CosmoFlow train on few huge samples; 256 is
# ResNet-50's usual ImageNet batch).
STRONG_BATCH = {"meshnet": 16, "resnet50": 256, "cosmoflow": 64}
# Weak scaling: samples per rank (32 images per GPU is ResNet-50's usual per-GPU batch). One 512^3
# CosmoFlow sample needs about twice a V100's 16 GB on its own, so with one sample per rank no
# split fits at any P: there it is one sample per 4 ranks (one 4-GPU node per sample).
WEAK_PER_RANK = {"meshnet": Fraction(1), "resnet50": Fraction(32), "cosmoflow": Fraction(1, 4)}
MODES = ("strong", "weak")
GIB = 2.0 ** 30     # bytes; the tables count memory in GiB


class Chains:
    """perfmodel chains by (model, sample shape, batch). A model whose layers do not depend on the
    input size is built once; one that does (CosmoFlow) is built per size, walked at once for every
    batch in `batches`, and only the last one built is kept, since their parameters take GBs at
    large sizes."""

    def __init__(self, batches=()):
        self.batches = set(batches)
        self._chains = {}
        self._models = {}
        self._invalid = {}

    def get(self, name, shape, batch):
        """The chain, or ValueError (with the model's message) when the model refuses the shape."""
        from perfmodel.layers import walk
        key = (name, tuple(shape), int(batch))
        hit = self._chains.get(key)
        if hit is not None:
            return hit
        if key[:2] in self._invalid:
            raise ValueError(self._invalid[key[:2]])
        try:
            if _size_dependent(name):
                last = self._models.get("last")
                model = last[1] if last and last[0] == key[:2] else self._build(name, shape)
                self._models["last"] = (key[:2], model)
                for b in self.batches | {int(batch)}:
                    self._chains[(name, tuple(shape), b)] = walk(model, (b,) + tuple(shape))
            else:
                model = self._models.get((name, shape[0]))
                if model is None:
                    model = self._models[(name, shape[0])] = self._build(name, shape)
                self._chains[key] = walk(model, (int(batch),) + tuple(shape))
        except ValueError as e:
            self._invalid[key[:2]] = str(e)
            raise
        return self._chains[key]

    @staticmethod
    def _build(name, shape):
        from ..nn.models import build_for_input
        return build_for_input(name, shape)


def _size_dependent(name):
    from hpcnn import models
    return "input_size" in models.options(name)
