"""snntorch_sparse.data: latency coding, the digits default, Fashion-MNIST IDX files and the
tonic loaders (N-MNIST .bin, SHD .h5) on small files written in the real formats."""

import gzip
import math
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from snntorch_sparse import data


# --------------------------------------------------------------------- latency coding
def test_latency_matches_formula():
    torch.manual_seed(0)
    x = torch.rand(500, dtype=torch.float64)
    spk = data.latency_code(x, num_steps=100, tau_eff=20.0, theta=0.2, dt=1.0)
    assert spk.shape == (100, 500) and spk.dtype == torch.float32
    for i in range(500):
        xi = x[i].item()
        expected = math.floor(20.0 * math.log(xi / (xi - 0.2))) if xi > 0.2 else None
        times = spk[:, i].nonzero().flatten().tolist()
        if expected is None or expected >= 100:
            assert times == []
        else:
            assert times == [expected]


def test_latency_properties():
    torch.manual_seed(1)
    x = torch.rand(4, 7, 7)
    spk = data.latency_code(x, num_steps=40, tau_eff=10.0, theta=0.3, dt=0.5)
    assert spk.shape == (40, 4, 7, 7)
    assert spk.max() <= 1 and (spk.sum(0) <= 1).all()          # at most one spike per pixel
    assert spk[:, x <= 0.3].sum() == 0                        # below threshold never spikes
    assert spk.sum() > 0
    # brighter pixel spikes no later: order of first-spike step follows intensity
    t = torch.arange(40).view(-1, 1, 1, 1).float()
    step = torch.where(spk.sum(0) > 0, (spk * t).sum(0), torch.tensor(math.inf))
    flat_x, flat_t = x.flatten(), step.flatten()
    order = flat_x.argsort(descending=True)
    assert (flat_t[order][1:] >= flat_t[order][:-1]).all()
    # a strictly brighter pixel spikes strictly earlier when the latencies differ by > Δt
    two = data.latency_code(torch.tensor([1.0, 0.4]), num_steps=100)
    assert two[:, 0].argmax() < two[:, 1].argmax()


def test_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        data.latency_code(torch.rand(3), num_steps=0)
    with pytest.raises(ValueError, match="tau_eff"):
        data.latency_code(torch.rand(3), num_steps=5, tau_eff=-1.0)


# ----------------------------------------------------------------------- digits
def test_digits_shapes_split_and_collate():
    train, test = data.load("digits")
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = train[0]
    assert x.shape == (data.DATASETS["digits"]["num_steps"], 64) and isinstance(y, int)
    batch_x, batch_y = next(iter(data.loader(train, batch_size=16)))
    assert batch_x.shape == (30, 16, 64) and batch_y.shape == (16,)
    assert torch.equal(batch_x[:, 3], train[3][0])
    assert set(batch_x.unique().tolist()) <= {0.0, 1.0}
    # the split is fixed: a second load gives the same test set
    _, again = data.load("digits")
    assert torch.equal(again.images, test.images)


def test_loader_shuffle_is_reproducible():
    train, _ = data.load("digits")
    a = next(iter(data.loader(train, 8, shuffle=True, seed=3)))[1]
    b = next(iter(data.loader(train, 8, shuffle=True, seed=3)))[1]
    assert torch.equal(a, b)


def test_unknown_dataset_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load("cifar")
    with pytest.raises(ValueError, match="needs data_dir"):
        data.load("shd")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.load("shd", data_dir=str(tmp_path / "nope"))


def test_latency_dataset_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must match"):
        data.LatencyDataset(torch.rand(5, 4), torch.zeros(4, dtype=torch.long), 10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.LatencyDataset(torch.rand(5, 4) * 255, torch.zeros(5, dtype=torch.long), 10)


# --------------------------------------------------------------------- Fashion-MNIST
def _write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


def test_fmnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = {True: rng.integers(0, 256, (6, 28, 28)), False: rng.integers(0, 256, (3, 28, 28))}
    labs = {True: rng.integers(0, 10, 6), False: rng.integers(0, 10, 3)}
    for train, (img_name, lab_name) in data._FMNIST_FILES.items():
        _write_idx(str(raw / img_name) + ".gz", imgs[train], compress=True)
        _write_idx(raw / lab_name, labs[train])
    train, test = data.load("fmnist", data_dir=str(tmp_path), num_steps=50)
    assert len(train) == 6 and len(test) == 3
    x, y = test[2]
    assert x.shape == (50, 784) and y == labs[False][2]
    expected = data.latency_code(torch.tensor(imgs[False][2].reshape(-1) / 255.0), 50)
    assert torch.equal(x, expected)


def test_fmnist_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load("fmnist", data_dir=str(tmp_path))
    names = data._FMNIST_FILES[True] + data._FMNIST_FILES[False]
    for name in names:
        _write_idx(tmp_path / name, np.zeros((4, 28, 28) if "images" in name else (5,)))
    with pytest.raises(ValueError, match="disagree"):
        data.load("fmnist", data_dir=str(tmp_path))
    (tmp_path / names[0]).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12 + b"\x01")
    with pytest.raises(ValueError, match="header says"):
        data.load("fmnist", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- N-MNIST
def _write_nmnist_bin(path, x, y, t_us, p):
    """N-MNIST's 40-bit event words: x, y, p<<7 | t[22:16], t[15:8], t[7:0]."""
    raw = np.zeros((len(x), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (np.asarray(p) << 7) | ((np.asarray(t_us) >> 16) & 0x7F)
    raw[:, 3] = (np.asarray(t_us) >> 8) & 0xFF
    raw[:, 4] = np.asarray(t_us) & 0xFF
    path.write_bytes(raw.tobytes())


def test_nmnist_through_tonic(tmp_path):
    root = tmp_path / "NMNIST"
    samples = {}
    for folder, digit in (("Train", 3), ("Train", 7), ("Test", 5)):
        d = root / folder / str(digit)
        d.mkdir(parents=True)
        # events: (x, y, t µs, p); two polarities at the same pixel and bin merge to one spike
        ev = [(1, 2, 500, 0), (1, 2, 700, 1), (33, 0, 2500, 1), (10, 20, 9999, 0),
              (0, 0, 10_000, 1)]  # the last one falls after T·Δt = 10 ms
        x, y, t, p = map(np.array, zip(*ev))
        x = (x + digit) % 34  # a different picture per sample
        _write_nmnist_bin(d / "00001.bin", x, y, t, p)
        samples[(folder, digit)] = (x, y, t)
    train, test = data.load("nmnist", data_dir=str(tmp_path), num_steps=10)
    assert len(train) == 2 and len(test) == 1
    for ds, keys in ((train, [("Train", 3), ("Train", 7)]), (test, [("Test", 5)])):
        for i, key in enumerate(keys):
            spk, label = ds[i]
            assert label == key[1] and spk.shape == (10, 1156)
            xs, ys, ts = samples[key]
            expected = torch.zeros(10, 34, 34)
            for xx, yy, tt in zip(xs, ys, ts):
                if tt < 10_000:
                    expected[tt // 1000, yy, xx] = 1
            assert torch.equal(spk, expected.view(10, 1156))
    x, y = next(iter(data.loader(train, batch_size=2)))
    assert x.shape == (10, 2, 1156) and y.tolist() == [3, 7]
    # DataLoader workers receive the dataset pickled (spawn) or forked
    again = pickle.loads(pickle.dumps(train))
    assert torch.equal(again[1][0], train[1][0])
    x2, y2 = next(iter(data.loader(train, batch_size=2, num_workers=1)))
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_nmnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NMNIST[/\\]Train[/\\]<0..9>[/\\]\*\.bin"):
        data.load("nmnist", data_dir=str(tmp_path))


# -------------------------------------------------------------------------------- SHD
def _write_shd(path, times, units, labels):
    """The SHD layout tonic reads: ragged spikes/times (s) and spikes/units, labels."""
    def ragged(rows, dtype):
        out = np.empty(len(rows), dtype=object)
        out[:] = [np.asarray(r, dtype) for r in rows]
        return out

    with h5py.File(path, "w") as f:
        f.create_dataset("spikes/times", data=ragged(times, np.float32),
                         dtype=h5py.vlen_dtype(np.float32))
        f.create_dataset("spikes/units", data=ragged(units, np.uint16),
                         dtype=h5py.vlen_dtype(np.uint16))
        f.create_dataset("labels", data=np.asarray(labels, np.uint16))
        f.create_dataset("extra/keys", data=np.array([f"digit-{i}".encode() for i in range(20)]))
        f.create_dataset("extra/speaker", data=np.zeros(len(labels), np.uint16))


def test_shd_through_tonic(tmp_path):
    root = tmp_path / "SHD"
    root.mkdir()
    # times in seconds; Δt = 2 ms, T = 8 → 16 ms window
    times = [[0.0005, 0.0011, 0.0041, 0.0200], [0.0150]]
    units = [[3, 3, 699, 5], [0]]
    _write_shd(root / "shd_train.h5", times, units, [4, 19])
    _write_shd(root / "shd_test.h5", times[:1], units[:1], [11])
    train, test = data.load("shd", data_dir=str(tmp_path), num_steps=8)
    assert len(train) == 2 and len(test) == 1
    spk, label = train[0]
    assert label == 4 and spk.shape == (8, 700)
    expected = torch.zeros(8, 700)
    expected[0, 3] = 1          # two events in the same 2 ms bin: one spike
    expected[2, 699] = 1
    assert torch.equal(spk, expected)                       # 20 ms event is past T·Δt
    spk1, label1 = train[1]
    assert label1 == 19 and spk1.nonzero().tolist() == [[7, 0]]
    assert test[0][1] == 11
    assert pickle.loads(pickle.dumps(train))[1][1] == 19


def test_shd_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SHD[/\\]shd_train\.h5"):
        data.load("shd", data_dir=str(tmp_path))
    os.makedirs(tmp_path / "SHD")
    _write_shd(tmp_path / "SHD" / "shd_train.h5", [[0.001]], [[1]], [0])
    with pytest.raises(FileNotFoundError, match=r"shd_test\.h5"):
        data.load("shd", data_dir=str(tmp_path))


# ------------------------------------------------ malformed data: one DataError line
def _fmnist_files(tmp_path, labels=None, compress=False):
    rng = np.random.default_rng(0)
    for train, (img_name, lab_name) in data._FMNIST_FILES.items():
        n = 4 if train else 2
        _write_idx(str(tmp_path / img_name) + (".gz" if compress else ""),
                   rng.integers(0, 256, (n, 28, 28)), compress=compress)
        lab = rng.integers(0, 10, n) if labels is None else np.asarray(labels[:n])
        _write_idx(tmp_path / lab_name, lab)
    return tmp_path / (data._FMNIST_FILES[True][0] + (".gz" if compress else ""))


def test_truncated_idx_header_is_a_data_error(tmp_path):
    images = _fmnist_files(tmp_path)
    images.write_bytes(b"\x00\x00\x08\x03\x00\x00")  # 3 dimensions announced, none given
    with pytest.raises(data.DataError, match="truncated IDX header"):
        data.load("fmnist", data_dir=str(tmp_path))


def test_corrupt_gzip_is_a_data_error(tmp_path):
    images = _fmnist_files(tmp_path, compress=True)
    images.write_bytes(images.read_bytes()[:40])  # a truncated archive
    with pytest.raises(data.DataError, match="cannot be read"):
        data.load("fmnist", data_dir=str(tmp_path))
    images.write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="cannot be read"):
        data.load("fmnist", data_dir=str(tmp_path))


def test_out_of_range_labels_are_a_data_error_at_load(tmp_path):
    _fmnist_files(tmp_path, labels=[0, 1, 12, 3])
    with pytest.raises(data.DataError, match="sample 2: label 12 is outside \\[0, 10\\)"):
        data.load("fmnist", data_dir=str(tmp_path))


def test_out_of_range_shd_label_is_a_data_error(tmp_path):
    root = tmp_path / "SHD"
    root.mkdir()
    _write_shd(root / "shd_train.h5", [[0.001], [0.002]], [[1], [2]], [3, 25])
    _write_shd(root / "shd_test.h5", [[0.001]], [[1]], [0])
    train, _ = data.load("shd", data_dir=str(tmp_path), num_steps=4)
    assert train[0][1] == 3
    with pytest.raises(data.DataError, match="sample 1: label 25 is outside \\[0, 20\\)"):
        train[1]


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True])
def test_load_rejects_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        data.load("digits", num_steps=num_steps)
