"""Raw-format readers, one file per format; each returns a `llmrec.data.raw.RawData` (docs/design.md §3)."""
