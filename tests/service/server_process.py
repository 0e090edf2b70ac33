"""The service (with the scripted generator) as a process of its own, for tests that measure the server
alone: its memory, its event loop.
Run: python server_process.py DATA_DIR PORT '{"setting": value}' ['{"generator_field": value}']."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from service_helpers import ScriptedGenerator, make_app

if __name__ == "__main__":
    data_dir, port, overrides = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    generator = ScriptedGenerator(**json.loads(sys.argv[4] if len(sys.argv) > 4 else "{}"))
    app = make_app(data_dir, generator, **overrides)
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
