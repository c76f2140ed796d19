"""Every Python block of README.md and docs/*.md runs as written.

The blocks of one page run in order, in one namespace (a page may build on its earlier
blocks), in a fresh interpreter whose working directory is a temporary folder. A block
meant only to be read is fenced as ``text``, not ``python``.
"""

import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import package_env
from test_data import _write_shd as write_shd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path):
    with open(path, encoding="utf-8") as f:
        return FENCE.findall(f.read())


def test_pages_found():
    assert len(PAGES) > 5 and sum(len(python_blocks(p)) for p in PAGES) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_page_blocks_run(page, tmp_path):
    # docs/datasets.md loads SHD from ~/data: give it a home with tiny files in SHD's format.
    shd = tmp_path / "data" / "SHD"
    shd.mkdir(parents=True)
    for name, n in (("shd_train.h5", 3), ("shd_test.h5", 2)):
        write_shd(shd / name, [[0.001, 0.2]] * n, [[1, 699]] * n, list(range(n)))
    blocks = python_blocks(page)
    script = "\n".join(f"# --- block {i + 1}\n{b}" for i, b in enumerate(blocks))
    (tmp_path / "page.py").write_text(script)
    run = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, env=package_env(MPLBACKEND="Agg", HOME=str(tmp_path)),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{os.path.relpath(page, ROOT)}:\n{run.stderr[-3000:]}"
