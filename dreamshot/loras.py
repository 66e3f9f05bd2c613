"""The LoRA library: every LoRA the generator may use, trained by the studio or uploaded.

Rows live in the ``loras`` table; files live under ``<data>/loras/``. The generation service reads
this table on each request, so a LoRA registered here appears in the Generate tab without a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from . import schema
from .errors import InvalidInput, NotFound
from .storage import now

ORIGINS = ("trained", "uploaded")


@dataclass(frozen=True)
class LoraInfo:
    id: int
    name: str
    shot: str | None
    path: Path          # absolute path of the .safetensors file
    format: str         # "diffusers" or "kohya"
    origin: str
    run_id: int | None
    sha256: str
    base_model: str | None
    meta: dict

    @property
    def short_hash(self) -> str:
        """AUTOMATIC1111-style short hash (first 12 hex digits of the file's sha256)."""
        return self.sha256[:12]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LoraLibrary:
    def __init__(self, studio):
        self.studio = studio
        self.db = studio.db
        self.data_dir = Path(studio.settings.data_dir).resolve()

    def _row_to_info(self, row) -> LoraInfo:
        path = Path(row.path)
        if not path.is_absolute():
            path = self.data_dir / path
        return LoraInfo(row.id, row.name, row.shot, path, row.format, row.origin, row.run_id,
                        row.sha256, row.base_model, dict(row.meta or {}))

    def register(self, path: Path, *, name: str, shot: str | None, origin: str, fmt: str = "diffusers",
                 run_id: int | None = None, base_model: str | None = None, meta: dict | None = None) -> LoraInfo:
        """Add (or replace, same name) a LoRA file. The file must already be complete on disk."""
        path = Path(path).resolve()
        if origin not in ORIGINS:
            raise InvalidInput(f"origin must be one of {ORIGINS}")
        if not path.is_file() or path.suffix != ".safetensors":
            raise InvalidInput(f"{path.name}: a LoRA must be an existing .safetensors file")
        stored = str(path.relative_to(self.data_dir)) if path.is_relative_to(self.data_dir) else str(path)
        values = dict(name=name, shot=shot, path=stored, format=fmt, origin=origin, run_id=run_id,
                      sha256=file_sha256(path), base_model=base_model, meta=meta or {}, created_at=now())
        table = schema.loras
        with self.db.write() as conn:
            conn.execute(table.delete().where(table.c.name == name))
            conn.execute(table.insert().values(**values))
        return self.get(name)

    def list(self) -> list[LoraInfo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(schema.loras).order_by(schema.loras.c.created_at)).all()
        return [self._row_to_info(r) for r in rows]

    def get(self, name: str) -> LoraInfo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(schema.loras).where(schema.loras.c.name == name)).first()
        if row is None:
            raise NotFound(f"No LoRA called {name!r}.")
        return self._row_to_info(row)

    def remove(self, name: str) -> None:
        with self.db.write() as conn:
            conn.execute(schema.loras.delete().where(schema.loras.c.name == name))
