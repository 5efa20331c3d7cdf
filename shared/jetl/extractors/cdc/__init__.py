"""PostgreSQL change data capture (`jetl[cdc]`): a table's snapshot, then its inserts, updates and deletes from a
logical replication slot, in rolling runs (docs/cdc.md).

Modules: `pgoutput` (the output plugin's messages, parsed) and `extractor` (`PostgresCDCExtractor`: the snapshot,
the bounded read of the slot, the confirm after JetStream's ack). Import the public name from `jetl.extractors.cdc`.
"""

from jetl.extractors.cdc.extractor import PostgresCDCExtractor

__all__ = ["PostgresCDCExtractor"]
