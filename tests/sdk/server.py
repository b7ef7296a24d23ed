"""Starts `llamagate serve` for the SDK checks: a config on a free loopback port, the
server process, and the base URL once it accepts connections."""

import json
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BINARY = os.environ.get("LLAMAGATE_BIN", os.path.join(TARGET, "debug", "llamagate"))
MODEL_FILE = os.environ.get("LLAMAGATE_TEST_MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))


HERMES_TEMPLATE = os.path.join(ROOT, "tests", "fixtures", "hermes_tools.jinja")


def hermes_model(name):
    """TOML for the test model on llama.cpp with a Hermes tool template: its tools are
    offered, and its calls read back, in the model's own `<tool_call>` syntax."""
    with open(HERMES_TEMPLATE) as f:
        template = json.dumps(f.read())  # a JSON string is a TOML basic string
    return (f'[[models]]\nname = "{name}"\nsource = "{MODEL_FILE}"\nengine = "llama.cpp"\n'
            f'pinned = true\nchat_template = {template}\n')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config_body):
    """`config_body`: the TOML after `[server] bind`. Returns (process, config path, base URL)."""
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f'[server]\nbind = "127.0.0.1:{port}"\n{config_body}')
    config.close()
    # Only the configured models, not what else lies in models/ (scheduler.models_dir).
    env = dict(os.environ, LLAMAGATE__SCHEDULER__MODELS_DIR="", LLAMAGATE__AUTH__STORE="")
    proc = subprocess.Popen([BINARY, "serve", "--config", config.name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, config.name, f"http://127.0.0.1:{port}"
