import json, time
from pathlib import Path
import pytest
from test_playground import *  # noqa

def test_dbg(page, server, tmp_path):
    _, key, _ = server
    page.fill("#api-key", key)
    keypoints = tmp_path / "pose.json"
    keypoints.write_text(json.dumps({"people": [], "canvas_width": 96, "canvas_height": 64}))
    page.set_input_files("#file-input", str(keypoints))
    time.sleep(5)
    print("STATUS", page.inner_text("#pose-status"), page.get_attribute("#pose-status", "data-state"), page.inner_text("#error"))
    print(page.evaluate("document.querySelector('#pose-preview').outerHTML")[:200])
