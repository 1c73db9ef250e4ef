"""A diagnostics endpoint that must never ship: it runs a shell command built from user input."""

import subprocess


def ping(host: str) -> str:
    # Command injection: `host` comes from the request.
    result = subprocess.run(f"ping -c 1 {host}", shell=True, capture_output=True, text=True)
    return result.stdout
