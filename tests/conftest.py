import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def minivtab(tmp_path_factory):
    """mini-VTAB digits and digits_rot written in the processed VTAB-1K layout."""
    from peft_core.data.minivtab import build_minivtab
    return build_minivtab(tmp_path_factory.mktemp("minivtab"), ["digits", "digits_rot"])
