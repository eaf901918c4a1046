"""The main job: `make course` opens JupyterLab on the course. Start a real server and list the lessons."""

import json
import urllib.request
from pathlib import Path

from qlora_lessons.course import LESSONS

from lab_server import jupyterlab

ROOT = Path(__file__).resolve().parents[1]


def test_jupyterlab_serves_the_lessons(tmp_path):
    with jupyterlab(ROOT, tmp_path) as server:
        with urllib.request.urlopen(server.url("api/contents/notebooks"), timeout=10) as response:
            listing = json.load(response)
        served = {item["name"] for item in listing["content"]}
        assert {lesson.notebook for lesson in LESSONS} <= served
        with urllib.request.urlopen(server.url("lab"), timeout=10) as response:
            assert response.status == 200 and b"JupyterLab" in response.read()
