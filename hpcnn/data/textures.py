"""Mosaics of real photographs (brick, grass, gravel from scikit-image) with a per-pixel label map.

Each sample is a warped Voronoi partition of the image into regions of about `region` pixels
across; every region shows one of the three photographs (tiled, at a random offset and flip)
and its pixels carry that photograph's label 0 (brick), 1 (grass) or 2 (gravel). The
photographs are standardized to zero mean and unit variance, so that a pixel's value says
little about its class: the task needs spatial context. With task = "classify" a sample is
instead a crop of a single photograph, labelled with its class.

Everything about a sample is drawn from (seed, split, index), and every pixel is a function
of its coordinates and that draw, so a rank computes exactly its block (any size: 512^2 up
to 4096^2 and beyond) without the rest of the sample. The training split uses rows 0..383
of each photograph and the validation split rows 384..511, so validation shows texture the
model has not seen.
"""
import numba
import numpy as np

from .dataset import Dataset

__all__ = ["Textures", "OPTIONS", "CLASSES", "open_split"]

CLASSES = ("brick", "grass", "gravel")
_TRAIN_ROWS = 384  # rows of each 512x512 photograph used by the training split

OPTIONS = {
    "size": (int, 512, "positive", "side of the square images in pixels"),
    "samples": (int, 64, "positive", "number of training images"),
    "val_samples": (int, 16, "positive", "number of validation images"),
    "region": (int, 64, "positive", "mean width of a mosaic region in pixels"),
    "task": (str, "segment", ("segment", "classify"), "per-pixel labels, or one label per crop"),
}

_photos = None


def _standardized_photos():
    """(3, 512, 512) float32: brick, grass, gravel, each with mean 0 and variance 1."""
    global _photos
    if _photos is None:
        import skimage.data
        stack = []
        for name in CLASSES:
            p = getattr(skimage.data, name)().astype(np.float64)
            stack.append(((p - p.mean()) / p.std()).astype(np.float32))
        _photos = np.stack(stack)
    return _photos


class Textures(Dataset):
    """One split of the texture mosaics: x (n, 1, S, S) float32, y (n, S, S) int64 in 0..2
    (segment) or y (n,) (classify)."""

    num_classes = 3

    def __init__(self, split="train", seed=0, size=512, samples=64, val_samples=16, region=64, task="segment"):
        self.split = split
        self.seed = int(seed)
        self.size = int(size)
        self.region = int(region)
        self.task = task
        self.length = int(val_samples if split == "val" else samples)
        self.sample_shape = (1, self.size, self.size)
        self.name = f"textures[{split}]"
        photos = _standardized_photos()
        self._photos = photos[:, :_TRAIN_ROWS] if split == "train" else photos[:, _TRAIN_ROWS:]
        self._cache = (None, None)
        self._block_cache = (None, None)

    # --- the per-sample draw --------------------------------------------------------------
    def _draw(self, index):
        if self._cache[0] == index:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, 1 if self.split == "val" else 0, index, 0x7E47])
        period = self._photos.shape[1:]
        draw = {
            # per class: tile offset (rows, cols) and flips
            "offset": np.stack([rng.integers(0, period[0], 3), rng.integers(0, period[1], 3)], axis=1),
            "flip": rng.integers(0, 2, (3, 2)).astype(bool),
        }
        if self.task == "classify":
            draw["label"] = int(rng.integers(0, 3))
        else:
            g = -(-self.size // self.region) + 2  # cells per side, with a rim so borders see neighbours
            draw["jitter"] = rng.random((g, g, 2))
            draw["cell_label"] = rng.integers(0, 3, (g, g))
            draw["warp"] = (self.region / 4.0, rng.uniform(0.5, 1.5, 2) * 3.0 * self.region,
                            rng.uniform(0, 2 * np.pi, 2))
        self._cache = (index, draw)
        return draw

    def _texture_block(self, draw, k, spatial):
        """Photograph k tiled over the block: (h, w) float32."""
        photo = self._photos[k]
        rows = np.arange(spatial[0].start, spatial[0].stop)
        cols = np.arange(spatial[1].start, spatial[1].stop)
        tr = (rows + draw["offset"][k, 0]) % photo.shape[0]
        tc = (cols + draw["offset"][k, 1]) % photo.shape[1]
        if draw["flip"][k, 0]:
            tr = photo.shape[0] - 1 - tr
        if draw["flip"][k, 1]:
            tc = photo.shape[1] - 1 - tc
        return photo[tr[:, None], tc[None, :]]

    def _mosaic_block(self, draw, spatial):
        """(label map (h, w) int64, image (h, w) float32) of the block, one pass per pixel."""
        key = (id(draw), spatial)
        if self._block_cache[0] == key:
            return self._block_cache[1]
        h = spatial[0].stop - spatial[0].start
        w = spatial[1].stop - spatial[1].start
        label = np.empty((h, w), np.int64)
        image = np.empty((h, w), np.float32)
        amp, wavelength, phase = draw["warp"]
        _mosaic_kernel(spatial[0].start, spatial[1].start, float(self.region), float(amp),
                       np.asarray(wavelength, np.float64), np.asarray(phase, np.float64), draw["jitter"],
                       draw["cell_label"], self._photos, draw["offset"].astype(np.int64),
                       draw["flip"].astype(np.int64), label, image)
        self._block_cache = (key, (label, image))
        return label, image

    # --- Dataset ----------------------------------------------------------------------------
    def _inputs(self, index, spatial):
        draw = self._draw(index)
        if self.task == "classify":
            return self._texture_block(draw, draw["label"], spatial)[None]
        return self._mosaic_block(draw, spatial)[1][None]

    def _labels(self, index, spatial):
        draw = self._draw(index)
        if self.task == "classify":
            return draw["label"]
        return self._mosaic_block(draw, spatial)[0]


@numba.njit(cache=True, nogil=True)
def _mosaic_kernel(r0, c0, region, amp, wavelength, phase, jitter, cell_label, photos, offset, flip, label, image):
    """Each pixel: warp its centre, find the nearest jittered cell centre among the 3x3 cells around
    it, take that cell's class, and read that class's photograph tiled with its offset and flips."""
    h, w = label.shape
    g = jitter.shape[0]
    ph, pw = photos.shape[1], photos.shape[2]
    two_pi = 2.0 * np.pi
    shift_r = np.empty(w)  # the row warp depends on the column only, and the other way round
    for j in range(w):
        shift_r[j] = amp * np.sin(two_pi * (c0 + j + 0.5) / wavelength[0] + phase[0])
    for i in range(h):
        r = r0 + i + 0.5
        shift_c = amp * np.sin(two_pi * r / wavelength[1] + phase[1])
        for j in range(w):
            c = c0 + j + 0.5
            rw = r + shift_r[j]
            cw = c + shift_c
            ci = min(max(int(np.floor(rw / region)) + 1, 1), g - 2)
            cj = min(max(int(np.floor(cw / region)) + 1, 1), g - 2)
            best = np.inf
            k = 0
            for a in range(ci - 1, ci + 2):
                for b in range(cj - 1, cj + 2):
                    dr = rw - (a - 1 + jitter[a, b, 0]) * region
                    dc = cw - (b - 1 + jitter[a, b, 1]) * region
                    d2 = dr * dr + dc * dc
                    if d2 < best:
                        best = d2
                        k = cell_label[a, b]
            label[i, j] = k
            tr = (r0 + i + offset[k, 0]) % ph
            tc = (c0 + j + offset[k, 1]) % pw
            if flip[k, 0]:
                tr = ph - 1 - tr
            if flip[k, 1]:
                tc = pw - 1 - tc
            image[i, j] = photos[k, tr, tc]


def open_split(split, seed=0, **options):
    return Textures(split, seed=seed, **options)
