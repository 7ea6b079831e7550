"""Text embeddings on disk, content-addressed by the CLIP text tower that computed them.

At the paper's scale (~4M unique expressions × 4 templates) encoding the vocabulary is the first
thing every training run does; :class:`TextStore` keeps each ``(templates, text)`` embedding
across runs so a later run (another ``train.lr``, a resumed or a distributed one) encodes only
texts it has never seen.

Layout: ``<root>/<tower digest>.sqlite``, one table ``emb(tkey, text, vec)`` with ``tkey`` the
SHA-256 of the templates (JSON) and ``vec`` the float32 ``(E,)`` embedding bytes. The tower
digest (:func:`text_tower_digest`) is the SHA-256 of the text tower's parameters and buffers
(names, dtypes, shapes, bytes): other weights, another dtype (fp16 on a GPU) or another
architecture is another file, so a stored embedding is never read for a model that did not
compute it. Writes are transactions; concurrent readers are safe (SQLite WAL).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

VISUAL_PREFIX = "visual."  # open_clip CLIP: the image tower's parameters


def text_tower_digest(clip_model: nn.Module) -> str:
    """SHA-256 hex of every parameter and buffer of ``clip_model`` outside ``visual.``."""
    digest = hashlib.sha256(type(clip_model).__name__.encode())
    state = clip_model.state_dict()
    for name in sorted(state):
        if name.startswith(VISUAL_PREFIX):
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():  # 0-d tensors (logit_scale) are viewed as 1-d to read their bytes
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def templates_key(templates: Sequence[str]) -> str:
    """SHA-256 hex of the template list (order matters: it is the mean's order)."""
    return hashlib.sha256(json.dumps(list(templates)).encode()).hexdigest()


class TextStore:
    """Embeddings of one text tower under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, clip_model: nn.Module) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.digest = text_tower_digest(clip_model)
        self.path = self.root / f"{self.digest}.sqlite"
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (tkey TEXT, text TEXT, vec BLOB, "
            "PRIMARY KEY (tkey, text))"
        )
        self._db.commit()

    def get_many(self, templates: Sequence[str], texts: Iterable[str]) -> dict[str, torch.Tensor]:
        """The stored ones of ``texts``: text → ``(E,)`` float32 CPU tensor."""
        tkey = templates_key(templates)
        wanted = list(dict.fromkeys(texts))
        found: dict[str, torch.Tensor] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound-variable limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT text, vec FROM emb WHERE tkey = ? AND text IN ({marks})", [tkey, *chunk]
            )
            for text, vec in rows:
                found[text] = torch.from_numpy(np.frombuffer(vec, dtype=np.float32).copy())
        return found

    def put_many(self, templates: Sequence[str], items: Mapping[str, torch.Tensor]) -> None:
        """Store ``text → (E,)`` embeddings (float32); existing entries are kept as they are."""
        tkey = templates_key(templates)
        rows = [
            (tkey, text, emb.detach().to(torch.float32).cpu().numpy().tobytes())
            for text, emb in items.items()
        ]
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO emb VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
