"""Build and store indexes: read a corpus, chunk it, encode it, write it atomically."""

from indexer.build import BuildReport, build_index
from pipeline.store import IndexBundle, Manifest, load_index

__all__ = ["BuildReport", "IndexBundle", "Manifest", "build_index", "load_index"]
