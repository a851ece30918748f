"""The trainer's failure report: one line on stderr and in the container's termination message, with the
values of Secret-backed environment variables replaced by `***`.

The operator names those variables in DISTTRAIN_REDACT_ENV (comma-separated) and then sets the container's
terminationMessagePolicy to File, so that the kubelet copies this line, not the log tail, into the pod status,
from where the operator puts it into the job's conditions and events. No TensorFlow here: this runs when
anything, TensorFlow included, has failed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

REDACT_ENV = "DISTTRAIN_REDACT_ENV"
TERMINATION_LOG_ENV = "DISTTRAIN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
MASK = "***"
# Values shorter than this are not redacted: a Secret holding "1", "yes" or "0" would otherwise turn every
# such substring of the message into ***, making it useless while hiding nothing worth hiding.
MIN_SECRET_LENGTH = 4
MAX_MESSAGE_CHARS = 500


# `*` in DISTTRAIN_REDACT_ENV: a whole Secret came in through envFrom, its keys unknown to the operator, so every
# variable is hidden but these, which the image, the kubelet or the operator set and which hold no secret.
EVERY_VARIABLE = "*"
NOT_SECRET_PREFIXES = (
    "DISTTRAIN_",
    "TF_",
    "KUBERNETES_",
    "PYTHON",
    "LC_",
    "LANG",
    "PATH",
    "HOME",
    "HOSTNAME",
    "PWD",
    "SHLVL",
    "TERM",
    "USER",
    "VIRTUAL_ENV",
    "MNIST_DIR",
    "CUDA",
    "NVIDIA_",
    "LD_LIBRARY_PATH",
)


def redacted_names(env: dict[str, str] | os._Environ[str]) -> list[str]:
    """The variables DISTTRAIN_REDACT_ENV names; with `*`, every variable but the known non-secret ones."""
    names = [n.strip() for n in env.get(REDACT_ENV, "").split(",") if n.strip()]
    if EVERY_VARIABLE in names:
        names += [n for n in env if not n.startswith(NOT_SECRET_PREFIXES)]
    return [n for n in names if n != EVERY_VARIABLE]


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The strings to hide: each value of a variable named in DISTTRAIN_REDACT_ENV (absent, empty and
    shorter than MIN_SECRET_LENGTH ones ignored), also as it appears whitespace-collapsed, quoted by repr or
    JSON, and line by line for multi-line values (a key file); longest first, so a value that contains
    another is hidden whole."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name in redacted_names(env):
        value = env.get(name, "")
        if len(value) < MIN_SECRET_LENGTH:
            continue
        forms = {value, " ".join(value.split()), repr(value)[1:-1], json.dumps(value)[1:-1]}
        forms.update(line.strip() for line in value.splitlines())
        found.update(form for form in forms if len(form) >= MIN_SECRET_LENGTH)
    return sorted(found, key=len, reverse=True)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with every secret value (see `secret_values`) replaced by ***."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return text


def failure_line(error: BaseException, environ: dict[str, str] | None = None) -> str:
    """`disttrain-trainer: error: <Type>: <message>` on one line, secrets redacted, the message cut at 500
    characters (after redaction, so the cut never leaves part of a secret)."""
    message = redact(" ".join(str(error).split()), environ) or type(error).__name__
    return f"disttrain-trainer: error: {type(error).__name__}: {message[:MAX_MESSAGE_CHARS]}"


def termination_log_path() -> Path:
    """$DISTTRAIN_TERMINATION_LOG, else the kubelet's default path."""
    return Path(os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)


def write_failure_message(text: str) -> Path | None:
    """In a pod, `text` (the failure line) as the container's termination message; the sibling of
    `reporting.write_termination_message`, with its rules: only a file that already exists is written (the
    kubelet creates it), so outside Kubernetes nothing happens. Returns the path written."""
    path = termination_log_path()
    if not path.is_file():
        return None
    try:
        path.write_text(text)
    except OSError as error:
        log.warning("could not write the termination message to %s: %s", path, error)
        return None
    return path
