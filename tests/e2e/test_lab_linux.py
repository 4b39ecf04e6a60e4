"""docs/labs' Linux lab through nbclient: the minimal Linux boots, its virtio_balloon inflates, its stats come."""

import pytest

from tests.integration.test_notebooks import LINUX_LABS, run_lab
from tests.support.linux import ensure_linux_built

pytestmark = [pytest.mark.kvm, pytest.mark.linux]


@pytest.mark.parametrize("path", LINUX_LABS, ids=lambda p: p.stem)
def test_linux_lab_notebook_runs(path, tmp_path):
    ensure_linux_built()
    run_lab(path, tmp_path, timeout=3000)       # the boot alone takes 4-20 minutes on a nested host
