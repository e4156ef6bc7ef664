"""A replay report says how it was made, in the JSON and the HTML alike:
product and rule versions, a digest of the effective configuration (and of
the old one with --compare-with), the inputs, what was done, start and end."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from paths import REPO, SAMPLES
from service_helpers import subprocess_env

from b12comment import __version__
from b12comment.config import Config, config_digest, load_config, parse_config


def test_the_digest_is_of_the_settings_not_the_file():
    assert config_digest(load_config(REPO / "config.toml")) == config_digest(Config())  # config.toml is the defaults
    assert config_digest(parse_config("# a comment\n[rule]\n", "other.toml")) == config_digest(Config())
    changed = parse_config('[rule]\nrule_version = "b12-paed-3"\n', "new.toml")
    assert config_digest(changed) != config_digest(Config())


def test_the_json_and_html_report_record_their_provenance(tmp_path):
    new = tmp_path / "new.toml"
    new.write_text('[rule]\nrule_version = "b12-paed-3"\n')
    before = datetime.now().astimezone()
    done = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", str(SAMPLES), "--dry-run", "--config", str(new)]
        + ["--compare-with", str(REPO / "config.toml"), "--report", "r.json", "--html", "r.html"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    prov = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert prov["product"] == "b12comment" and prov["version"] == __version__
    assert prov["rule_version"] == "b12-paed-3"
    assert prov["config"] == str(new) and prov["config_sha256"] == config_digest(load_config(new))
    assert prov["compare_with"]["config_sha256"] == config_digest(Config())
    assert prov["inputs"] == [str(SAMPLES.resolve())]
    samples = sorted(p.name for p in SAMPLES.glob("*.hl7"))
    assert sorted(f["file"] for f in prov["files"]) == samples and prov["files_read"] == len(samples)
    assert prov["bytes_read"] == sum((SAMPLES / n).stat().st_size for n in samples)
    assert prov["mode"] == "dry-run"
    started = datetime.fromisoformat(prov["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(prov["ended_at"].replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= started <= ended
    html = Path(tmp_path / "r.html").read_text()
    assert "How this report was made" in html
    for value in (prov["config_sha256"], prov["compare_with"]["config_sha256"], "b12-paed-3", __version__):
        assert value in html
    assert prov["started_at"] in html and prov["ended_at"] in html
