"""Spike datasets, time-first: latency-coded images, N-MNIST and SHD (through tonic), and
the offline default (scikit-learn's 8×8 digits).

Every dataset yields ``(spikes [T, N], label)`` with float32 spikes in {0, 1}; the
:func:`collate` function stacks a batch to ``[T, B, N]`` (time-major, as the layers of this
package expect). Nothing here downloads: a missing dataset raises ``FileNotFoundError``
naming the files to put where; malformed data raise :class:`DataError` (a ValueError).

Example::

    from snntorch_sparse import data
    train, test = data.load("digits")                 # offline, latency-coded
    loader = data.loader(train, batch_size=64, shuffle=True, seed=0)
    x, y = next(iter(loader))                         # x: [T, 64, 64], y: [64]
"""

import gzip
import math
import os

import numpy as np
import torch

#: Input side of each dataset (paper, supplementary E.6): inputs N, classes, steps T,
#: step Δt in ms. N-MNIST's two polarities are merged (the paper's 1156 = 34×34 inputs).
DATASETS = {
    "digits": dict(num_inputs=64, num_classes=10, num_steps=30, dt_ms=1.0),
    "fmnist": dict(num_inputs=784, num_classes=10, num_steps=100, dt_ms=1.0),
    "nmnist": dict(num_inputs=34 * 34, num_classes=10, num_steps=300, dt_ms=1.0),
    "shd": dict(num_inputs=700, num_classes=20, num_steps=500, dt_ms=2.0),
}

#: Latency coding of images (supplementary E.1): τ_eff and θ.
TAU_EFF_MS = 20.0
THETA = 0.2



class DataError(ValueError):
    """Data that exist but are malformed: wrong shapes, corrupt files, bad values."""


_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ------------------------------------------------------------------- latency coding
def latency_code(x, num_steps, tau_eff=TAU_EFF_MS, theta=THETA, dt=1.0):
    """Convert intensities in [0, 1] to single spikes at latencies (paper supp. E.1).

    .. math::
        T(x) = τ_{eff}·\\log\\frac{x}{x − θ}  \\; (x > θ), \\qquad T(x) = ∞ \\; (x ≤ θ)

    A pixel spikes once, at step ``floor(T(x)/Δt)``, if that step is ``< num_steps``;
    pixels at or below θ never spike, and brighter pixels spike earlier.

    Args:
        x: tensor of intensities, any shape (normalise to [0, 1] first).
        num_steps: T, the number of time steps.
        tau_eff, theta, dt: τ_eff and Δt in the same unit (ms in the paper), θ.

    Returns:
        float32 spikes ``[num_steps, *x.shape]``.

    Example::

        >>> spk = latency_code(torch.tensor([1.0, 0.5, 0.1]), num_steps=30)
        >>> spk.nonzero().tolist()     # (step, pixel): bright first, 0.1 never
        [[4, 0], [10, 1]]
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (tau_eff > 0 and dt > 0 and theta >= 0):
        raise ValueError(f"need tau_eff > 0, dt > 0, theta >= 0; got {tau_eff}, {dt}, {theta}")
    x = torch.as_tensor(x, dtype=torch.float64)
    fires = x > theta
    # log(x / (x − θ)) on the firing pixels only; the others get +inf and never spike.
    safe = torch.where(fires, x, torch.ones_like(x) * (theta + 1.0))
    latency = torch.where(fires, tau_eff * torch.log(safe / (safe - theta)),
                          torch.full_like(x, math.inf))
    step = torch.floor(latency / dt)
    steps = torch.arange(num_steps, dtype=torch.float64).view(-1, *([1] * x.dim()))
    return (step.unsqueeze(0) == steps).to(torch.float32)


# ------------------------------------------------------------------------ datasets
class LatencyDataset(torch.utils.data.Dataset):
    """Images coded to spike latencies on the fly: item ``i`` is ``(spikes [T, N], label)``.

    ``images`` ``[S, ...]`` holds intensities in [0, 1]; each is flattened to N inputs.
    """

    def __init__(self, images, labels, num_steps, tau_eff=TAU_EFF_MS, theta=THETA, dt=1.0,
                 num_classes=None):
        images = torch.as_tensor(images, dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if images.dim() < 2 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"images [S, ...] and labels [S] must match; got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if num_classes is not None and labels.numel():
            bad = ((labels < 0) | (labels >= num_classes)).nonzero()
            if bad.numel():
                i = int(bad[0])
                raise DataError(f"sample {i}: label {int(labels[i])} is outside "
                                f"[0, {num_classes})")
        if images.numel() and not (images.min() >= 0 and images.max() <= 1):
            raise DataError("images must be normalised to [0, 1]")
        self.images = images.reshape(images.shape[0], -1)
        self.labels = labels
        self.coding = dict(num_steps=num_steps, tau_eff=tau_eff, theta=theta, dt=dt)

    def __len__(self):
        return self.labels.shape[0]

    def __getitem__(self, i):
        return latency_code(self.images[i], **self.coding), int(self.labels[i])


class FrameDataset(torch.utils.data.Dataset):
    """An event dataset binned to binary frames: ``(spikes [T, N], label)``.

    ``events`` is a tonic dataset; ``to_frame`` bins one recording to ``[T, P, ...]``
    counts; polarities are merged and counts clipped to one spike per bin and input.
    """

    def __init__(self, events, to_frame, num_steps, num_classes=None):
        self.events = events
        self.to_frame = to_frame
        self.num_steps = num_steps
        self.num_classes = num_classes

    def __len__(self):
        return len(self.events)

    def __getitem__(self, i):
        ev, label = self.events[i]
        if self.num_classes is not None and not 0 <= int(label) < self.num_classes:
            raise DataError(f"sample {i}: label {int(label)} is outside [0, {self.num_classes})")
        frames = np.asarray(self.to_frame(ev))
        if frames.shape[0] != self.num_steps:
            raise DataError(f"sample {i}: expected {self.num_steps} frames, got {frames.shape[0]}")
        spikes = (frames.sum(axis=1) > 0).reshape(self.num_steps, -1)
        return torch.from_numpy(spikes.astype(np.float32)), int(label)


def collate(batch):
    """Stack ``(spikes [T, N], label)`` items to ``(spikes [T, B, N], labels [B])``."""
    spikes, labels = zip(*batch)
    return torch.stack(spikes, dim=1), torch.as_tensor(labels, dtype=torch.long)


def loader(dataset, batch_size, shuffle=False, seed=0, **kwargs):
    """A ``DataLoader`` with :func:`collate`; shuffling is reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=collate, generator=gen, **kwargs)


# --------------------------------------------------------------------- the sources
def digits(num_steps=DATASETS["digits"]["num_steps"], test_fraction=0.2, seed=0):
    """scikit-learn's 8×8 digits (1797 images, ships offline), latency-coded.

    Intensities 0..16 are scaled to [0, 1]; the stratified train/test split is fixed by
    ``seed``. Returns ``(train, test)`` :class:`LatencyDataset`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.data / 16.0, d.target, test_size=test_fraction,
                                              random_state=seed, stratify=d.target)
    return (LatencyDataset(x_tr, y_tr, num_steps), LatencyDataset(x_te, y_te, num_steps))


def _find_idx(data_dir, name):
    for sub in ("", "FashionMNIST/raw", "fashion-mnist", "fmnist"):
        for suffix in ("", ".gz"):
            path = os.path.join(data_dir, sub, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def read_idx(path):
    """Read an IDX file (the MNIST format; gzip allowed) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip: corrupt or truncated archive
        raise DataError(f"{path}: cannot be read ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {tuple(dims)}, file holds {body.size} values")
    return body.reshape(dims)


def fmnist(data_dir, num_steps=DATASETS["fmnist"]["num_steps"]):
    """Fashion-MNIST from its raw IDX files in ``data_dir``, latency-coded (paper E.1).

    Looks in ``data_dir``, ``data_dir/FashionMNIST/raw`` (torchvision's layout),
    ``data_dir/fashion-mnist`` and ``data_dir/fmnist``; ``.gz`` allowed.
    Returns ``(train, test)`` :class:`LatencyDataset`.
    """
    out = []
    for train in (True, False):
        paths = [_find_idx(data_dir, name) for name in _FMNIST_FILES[train]]
        if None in paths:
            names = ", ".join(_FMNIST_FILES[True] + _FMNIST_FILES[False])
            raise FileNotFoundError(
                f"Fashion-MNIST not found: put {names} (optionally .gz) in {data_dir} "
                "(from https://github.com/zalandoresearch/fashion-mnist)")
        images, labels = (read_idx(p) for p in paths)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(f"Fashion-MNIST files disagree: images {images.shape}, "
                             f"labels {labels.shape}")
        out.append(LatencyDataset(images / 255.0, labels.astype(np.int64), num_steps,
                                  num_classes=DATASETS["fmnist"]["num_classes"]))
    return tuple(out)


def _download_disabled(self):
    raise FileNotFoundError(f"{type(self).__name__} files missing under {self.location_on_system}")


_OFFLINE = {"_OfflineNMNIST": "NMNIST", "_OfflineSHD": "SHD"}


def _offline(name):
    """The tonic dataset ``_OFFLINE[name]``, subclassed to read files already in place and
    never download (tonic's own check also wants the downloaded archive). Built on first
    use, so tonic is imported only when needed, and stored as a module attribute so that
    DataLoader workers can unpickle it. The class keeps tonic's name: tonic stores files
    under ``save_to/<class name>``."""
    if name not in globals():
        import tonic

        base = getattr(tonic.datasets, _OFFLINE[name])
        globals()[name] = type(base.__name__, (base,), {
            "_check_exists": lambda self: True, "download": _download_disabled,
            "__module__": __name__, "__qualname__": name})
    return globals()[name]


def __getattr__(name):  # lets pickle find the classes made by _offline
    if name in _OFFLINE:
        return _offline(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def nmnist(data_dir, num_steps=DATASETS["nmnist"]["num_steps"],
           dt_ms=DATASETS["nmnist"]["dt_ms"]):
    """N-MNIST through tonic, binned at Δt (paper: 1 ms, T = 300), polarities merged to
    34×34 = 1156 inputs. Expects the extracted archives as tonic lays them out:
    ``data_dir/NMNIST/Train/<digit>/*.bin`` and ``data_dir/NMNIST/Test/<digit>/*.bin``.
    Returns ``(train, test)`` :class:`FrameDataset`.
    """
    import tonic

    root = os.path.join(data_dir, "NMNIST")
    for folder in ("Train", "Test"):
        path = os.path.join(root, folder)
        has_bins = os.path.isdir(path) and any(
            f.endswith(".bin") for _, _, files in os.walk(path) for f in files)
        if not has_bins:
            raise FileNotFoundError(
                f"N-MNIST not found: expected {path}/<0..9>/*.bin (unzip Train.zip and "
                "Test.zip from https://www.garrickorchard.com/datasets/n-mnist into "
                f"{root}/)")
    cls = _offline("_OfflineNMNIST")
    sensor = tonic.datasets.NMNIST.sensor_size
    window = dt_ms * 1000.0  # tonic's N-MNIST timestamps are in µs
    to_frame = tonic.transforms.ToFrame(sensor_size=sensor, time_window=window, start_time=0,
                                        end_time=num_steps * window)
    return tuple(FrameDataset(cls(save_to=data_dir, train=train), to_frame, num_steps,
                              DATASETS["nmnist"]["num_classes"])
                 for train in (True, False))


def shd(data_dir, num_steps=DATASETS["shd"]["num_steps"], dt_ms=DATASETS["shd"]["dt_ms"]):
    """Spiking Heidelberg Digits through tonic, binned at Δt (paper: 2 ms, T = 500),
    700 inputs, 20 classes. Expects ``data_dir/SHD/shd_train.h5`` and
    ``data_dir/SHD/shd_test.h5`` (the unzipped files of zenkelab.org).
    Returns ``(train, test)`` :class:`FrameDataset`.
    """
    import tonic

    root = os.path.join(data_dir, "SHD")
    for name in ("shd_train.h5", "shd_test.h5"):
        if not os.path.isfile(os.path.join(root, name)):
            raise FileNotFoundError(
                f"SHD not found: expected {os.path.join(root, name)} (download and gunzip "
                "shd_train.h5.gz and shd_test.h5.gz from "
                f"https://zenkelab.org/datasets/ into {root}/)")
    cls = _offline("_OfflineSHD")
    sensor = tonic.datasets.SHD.sensor_size
    window = dt_ms * 1000.0  # tonic converts SHD's seconds to µs
    to_frame = tonic.transforms.ToFrame(sensor_size=sensor, time_window=window, start_time=0,
                                        end_time=num_steps * window)
    try:
        sets = [cls(save_to=data_dir, train=train) for train in (True, False)]
    except (OSError, KeyError) as err:  # h5py: not HDF5, or not SHD's layout
        raise DataError(f"SHD files under {root} cannot be read: {err}") from None
    return tuple(FrameDataset(s, to_frame, num_steps, DATASETS["shd"]["num_classes"])
                 for s in sets)


def load(name, data_dir=None, num_steps=None):
    """``(train, test)`` datasets for ``name`` in :data:`DATASETS`.

    ``num_steps`` overrides T (default: the paper's, E.6). ``data_dir`` is required for
    every dataset except ``"digits"``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    steps = DATASETS[name]["num_steps"] if num_steps is None else num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_steps must be a positive int (or None for {name}'s default "
                         f"{DATASETS[name]['num_steps']}), got {num_steps!r}")
    if name == "digits":
        return digits(num_steps=steps)
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs data_dir (the folder holding its files)")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir} is not a directory")
    return {"fmnist": fmnist, "nmnist": nmnist, "shd": shd}[name](data_dir, num_steps=steps)
