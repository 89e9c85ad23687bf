"""ID-based sequential encoders (SASRec, GRU4Rec, Caser) honouring one contract (DESIGN.md §4)."""
