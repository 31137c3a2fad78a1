"""The documentation site builds with no broken link, reference or docstring."""

import os
import subprocess
import sys

from helpers import REPO


def test_docs_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                            check=False, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "guides" / "own-clips" / "index.html").is_file()
    reference = (site / "reference" / "hub-model" / "index.html").read_text()
    assert "from_pretrained" in reference and "predict" in reference
