"""File extractor: JSONL, CSV and Parquet, local paths and globs, gzip or zstd compressed, streamed in chunks.

Modules: `extractor` (`FileExtractor`: listing files and parsing them into chunks), `sources` (format and
compression, opening a file or a byte range of it), `partitions` (the plan for extractor replicas) and `cursor`
(the watermark and the bounded set of loaded files). The public names are re-exported here; import them from
`jetl.extractors.file`.
"""

from jetl.extractors.file.extractor import FileExtractor
from jetl.extractors.file.sources import Compression, Format

__all__ = ["Compression", "FileExtractor", "Format"]
