"""Settings shared by the app and every ``python -m`` CLI of the project.

Each flag has an environment-variable twin (flag wins over variable, variable over default), so a
Space is configured with variables and secrets and a laptop with flags::

    --data DIR            DREAMSHOT_DATA            ./studio-data
    --model ID|DIR|demo   DREAMSHOT_MODEL           stable-diffusion-v1-5/stable-diffusion-v1-5
    --db URL              DREAMSHOT_DB              sqlite:///<data>/studio.db
    --host HOST           DREAMSHOT_HOST            127.0.0.1 (GRADIO_SERVER_NAME is honoured too)
    --port PORT           DREAMSHOT_PORT            7860 (GRADIO_SERVER_PORT is honoured too)
    --share               DREAMSHOT_SHARE=1         off
    --admin-password PW   DREAMSHOT_ADMIN_PASSWORD  unset: no login
    --survey-only         DREAMSHOT_SURVEY_ONLY=1   off
    --allow-dir DIR       DREAMSHOT_ALLOWED_DIRS    none: server paths typed in the page stay in the data folder
    --dtype D             DREAMSHOT_DTYPE           auto (float16 on a CUDA GPU, float32 elsewhere)
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dreamshot.errors import SettingsError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_DATA = "./studio-data"
DEMO_MODEL = "demo"
# The weights' precision for inference (models.device_and_dtype turns it into a device and a torch dtype).
DTYPES = ("auto", "float16", "bfloat16", "float32")
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}

_TRUE = {"1", "true", "yes", "on"}


def _env(name: str, *fallbacks: str, default: str | None = None) -> str | None:
    for key in (name, *fallbacks):
        value = os.environ.get(key)
        if value not in (None, ""):
            return value
    return default


def _env_flag(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(DEFAULT_DATA)
    model: str = DEFAULT_MODEL
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    admin_password: str | None = field(default=None, repr=False)
    survey_only: bool = False
    allowed_dirs: tuple[Path, ...] = ()   # server folders the page may export to / import from
    dtype: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))

    # ---- derived paths: everything the studio writes lives under data_dir -------------------
    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def frames_dir(self) -> Path:
        return self.data_dir / "frames"

    @property
    def loras_dir(self) -> Path:
        return self.data_dir / "loras"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        """Where a server path typed in the page may point: the data folder and ``allowed_dirs``."""
        return (self.data_dir, *self.allowed_dirs)

    @property
    def login_required(self) -> bool:
        return bool(self.admin_password)

    def prepare_data_dir(self) -> "Settings":
        """Create the data folder and prove it is writable; raise SettingsError otherwise.

        Called before any UI is built so an unusable folder is reported in one clear line."""
        path = self.data_dir
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True) as fh:
                fh.write(b"ok")
                fh.flush()
        except OSError as exc:
            raise SettingsError(
                f"The data folder {str(path)!r} is not writable ({exc.strerror or exc}). "
                "Choose another one with --data DIR or DREAMSHOT_DATA."
            ) from None
        return self

    def check_port(self) -> "Settings":
        """Prove that host:port can be served on; raise SettingsError otherwise (another server holds
        the port, the host is not an address of this machine). Checked before the UI is built, so a
        second studio on the same port is refused at once, before it starts anything."""
        where = f"{self.host}:{self.port}"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError):
            raise SettingsError(f"Cannot serve on {where}: {self.host!r} does not resolve to an address "
                                "(--host or DREAMSHOT_HOST).") from None
        with socket.socket(family, kind, proto) as sock:
            # As the server does: a port left in TIME_WAIT by a studio that just stopped is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise SettingsError(
                        f"Port {self.port} on {self.host} is already in use (is the studio already running? "
                        f"Open http://{self.host}:{self.port}/). Choose another port with --port or "
                        "DREAMSHOT_PORT.") from None
                raise SettingsError(f"Cannot serve on {where} ({exc.strerror or exc}). Check --host and --port "
                                    "(DREAMSHOT_HOST, DREAMSHOT_PORT).") from None
        return self


def add_arguments(parser: argparse.ArgumentParser, *, server: bool = False,
                  model: bool = True) -> argparse.ArgumentParser:
    """Add the common flags to a CLI parser. ``server=True`` adds the serving flags too;
    ``model=False`` leaves ``--model`` to a subcommand that means another model by it."""
    group = parser.add_argument_group("studio settings (each also read from the environment)")
    group.add_argument("--data", metavar="DIR", default=None,
                       help=f"folder holding everything the studio writes [DREAMSHOT_DATA, default {DEFAULT_DATA}]")
    if model:
        group.add_argument("--model", metavar="ID|DIR|demo", default=None,
                           help=f"base model: a Hub id, a local diffusers folder, or 'demo' [DREAMSHOT_MODEL, default {DEFAULT_MODEL}]")
    group.add_argument("--db", metavar="URL", default=None,
                       help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/db [DREAMSHOT_DB, default SQLite in the data folder]")
    group.add_argument("--admin-password", metavar="PW", default=None,
                       help="when set, the studio asks for a login (any name + this password); "
                            "prefer the DREAMSHOT_ADMIN_PASSWORD variable or Space secret")
    group.add_argument("--dtype", metavar="|".join(DTYPES), default=None,
                       help="precision of the model weights: auto = float16 on a CUDA GPU, float32 elsewhere; "
                            "bfloat16 for GPUs that have it [DREAMSHOT_DTYPE, default auto]")
    if server:
        group.add_argument("--host", default=None, help="interface to serve on [DREAMSHOT_HOST, default 127.0.0.1]")
        group.add_argument("--port", type=int, default=None, help="port [DREAMSHOT_PORT, default 7860]")
        group.add_argument("--share", action="store_true", default=None, help="create a public gradio.live link [DREAMSHOT_SHARE=1]")
        group.add_argument("--survey-only", action="store_true", default=None,
                           help="serve nothing but the Survey tab, for participants [DREAMSHOT_SURVEY_ONLY=1]")
        group.add_argument("--allow-dir", metavar="DIR", action="append", default=None,
                           help="a server folder the page may export to and import from, besides the data "
                                "folder (repeatable) [DREAMSHOT_ALLOWED_DIRS, separated by "
                                f"{os.pathsep!r}]")
    return parser


def from_args(ns: argparse.Namespace | None = None) -> Settings:
    """Settings from parsed flags, falling back to environment variables, then defaults."""
    get = (lambda name: getattr(ns, name, None)) if ns is not None else (lambda name: None)
    port_text = get("port") or _env("DREAMSHOT_PORT", "GRADIO_SERVER_PORT", default="7860")
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError(f"--port must be a number, got {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"--port must be between 1 and 65535, got {port}")
    return Settings(
        dtype=get("dtype") or _env("DREAMSHOT_DTYPE", default="auto"),   # checked by Settings itself
        data_dir=Path(get("data") or _env("DREAMSHOT_DATA", default=DEFAULT_DATA)).expanduser(),
        model=(get("model") or _env("DREAMSHOT_MODEL", default=DEFAULT_MODEL)).strip(),
        db_url=get("db") or _env("DREAMSHOT_DB"),
        host=get("host") or _env("DREAMSHOT_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"),
        port=port,
        share=bool(get("share")) or _env_flag("DREAMSHOT_SHARE"),
        admin_password=get("admin_password") or _env("DREAMSHOT_ADMIN_PASSWORD"),
        survey_only=bool(get("survey_only")) or _env_flag("DREAMSHOT_SURVEY_ONLY"),
        allowed_dirs=_allowed_dirs(get("allow_dir")),
    )


def _allowed_dirs(flags: list[str] | None) -> tuple[Path, ...]:
    """--allow-dir values, else DREAMSHOT_ALLOWED_DIRS (os.pathsep-separated)."""
    given = flags if flags else (_env("DREAMSHOT_ALLOWED_DIRS") or "").split(os.pathsep)
    return tuple(Path(d.strip()).expanduser() for d in given if d and d.strip())


def parse_dtype(text: str) -> str:
    """One of DTYPES from a flag or variable (fp16, bf16, fp32 are accepted too); SettingsError otherwise."""
    value = (text or "auto").strip().lower()
    value = _DTYPE_ALIASES.get(value, value)
    if value not in DTYPES:
        raise SettingsError(f"--dtype (DREAMSHOT_DTYPE) must be one of {', '.join(DTYPES)}; got {text!r}.")
    return value


def parse(argv: list[str] | None = None, *, server: bool = False, description: str | None = None,
          epilog: str | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, server=server)
    return from_args(parser.parse_args(argv))
