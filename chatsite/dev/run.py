"""`make run`: a working development site on a fresh machine, in one command.

Keeps a dev JWT secret in the instance folder, creates the tables, starts the development
chat instance when none is configured or reachable, prints a ready token, then runs the
Flask dev server.
"""

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from .. import create_app, defaults
from ..site import Site
from ..storage.tables import create_tables
from .instance import KNOBS, MODELS
from .ports import free_port

log = logging.getLogger(__name__)

DEV_ORIGINS = '["http://localhost:*", "http://127.0.0.1:*"]'
OLLAMA_DEFAULT = ("127.0.0.1", 11434)


def dev_instances(port: int) -> list:
    """The dev instance as CHAT_INSTANCES: Ollama's API, or with `DEV_API=openai` the
    OpenAI API (its /v1, capabilities given as an operator gives them), or `both`."""
    ollama = f"http://127.0.0.1:{port}"
    openai = {
        "url": f"{ollama}/v1",
        "api": "openai",
        "models": {model.bare_name: list(model.capabilities) for model in MODELS.values()},
    }
    kind = os.environ.get("DEV_API", "ollama")
    return {"openai": [openai], "both": [ollama, openai]}.get(kind, [ollama])


def keep_file(path: Path, make: callable) -> str:
    """Read a small local file, creating it (private) the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def listening(address: tuple[str, int]) -> bool:
    """Tell whether something accepts connections at the address."""
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Prepare and run the development site on http://127.0.0.1:5000."""
    instance = Path("instance").resolve()
    os.environ.setdefault(
        "CHATSITE_JWT_SECRET",
        keep_file(instance / "dev-jwt-secret", lambda: secrets.token_urlsafe(48)),
    )
    os.environ.setdefault("CHATSITE_CORS_ORIGINS", DEV_ORIGINS)
    dev_instance = None
    app = create_app(instance_path=str(instance))
    if app.config["CHAT_INSTANCES"] == defaults.CHAT_INSTANCES and not listening(OLLAMA_DEFAULT):
        port = free_port()
        dev_instance = subprocess.Popen(
            [sys.executable, "-m", "chatsite.dev.instance", "--port", str(port)]
        )
        os.environ["CHATSITE_CHAT_INSTANCES"] = json.dumps(dev_instances(port))
        # Its knobs for long streams (dev_token_delay, dev_repeat) pass the options allowlist.
        os.environ.setdefault("CHATSITE_ALLOWED_OPTIONS", json.dumps(KNOBS))
        print(f"No chat instance configured: started the dev instance on port {port}.")
    with app.app_context():
        create_tables()
        user = keep_file(instance / "dev-user", lambda: str(uuid.uuid4()))
        site: Site = app.extensions["chatsite"]
        token = site.tokens.issue(user, expires_in=30 * 86400)
    print(f"\nDev user {user}; a token valid for 30 days:\n\n{token}\n")
    print("Try:")
    print(f"""  curl -N localhost:5000/chat -d '{{"token": "{token}", "model": "echo",""")
    print("""        "messages": [{"role": "user", "content": "Hello!"}]}'\n""")
    # Ctrl-C or `kill` of make run stops everything it started, never orphaning a server.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    command = [sys.executable, "-m", "flask", "--app", "chatsite", "run", "--debug"]
    command += ["--host", "127.0.0.1", "--port", os.environ.get("PORT", "5000")]
    # Its own process group, so that stopping it also stops the reloader's child.
    server = subprocess.Popen(command, start_new_session=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        if dev_instance is not None:
            dev_instance.terminate()
            dev_instance.wait(timeout=10)


if __name__ == "__main__":
    main()
